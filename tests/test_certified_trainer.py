"""CertifiedJacobianTrainer: soundness of what users see, the gain over plain training, the ART conventions.

Models: ``mnist_mlp(hidden=32)`` (preprocessing ``(0.1307, 0.3081)``) trained for 10 epochs on 600 embedded digits,
once plainly and once per certified setting (about a second each). Certificates come from
``JacobianBoundReporter.certify(method="interval")`` on ``N_TEST`` test digits; every certified digit is attacked at
its certified radius (ART PGD, torchattacks APGD-CE, random points of the ball): no prediction may change. The same
attacks must beat a deliberately wrong certificate (the training bound's Lipschitz term halved, i.e. twice the
radius the training bound gives), so the check can fail. Margins of the comparisons with plain training were chosen
from measurement (l2 eps 1.0: certified 0.21 vs 0.04 on 100 digits; l-inf 0.1: 0.31 vs 0.00).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from art_jacreg import CertifiedJacobianTrainer, JacobianBoundReporter
from art_jacreg.attacks import evaluate, run_attack
from art_jacreg.certify.objectives import CertifiedMargins
from art_jacreg.data import load_mnist
from art_jacreg.models import make_classifier, mnist_mlp

PRE = (0.1307, 0.3081)
N_TRAIN, N_TEST, EPOCHS = 600, 60, 10
ATTACKS = {"pgd": {"max_iter": 20}, "torchattacks": {"steps": 20}}
SETTINGS = {2.0: 1.0, np.inf: 0.1}  # norm -> training eps


@pytest.fixture(scope="module")
def mnist():
    (x_train, y_train), (x_test, y_test), _, _ = load_mnist()
    return x_train[:N_TRAIN], y_train[:N_TRAIN], x_test[:N_TEST], y_test[:N_TEST].argmax(1)


def _classifier(seed: int = 0):
    torch.manual_seed(seed)
    return make_classifier(mnist_mlp(seed=seed, hidden=32), preprocessing=PRE)


@pytest.fixture(scope="module")
def models(mnist):
    x, y = mnist[0], mnist[1]
    out = {"plain": _classifier()}
    out["plain"].fit(x, y, nb_epochs=EPOCHS, batch_size=64)
    for norm, eps in SETTINGS.items():
        clf = _classifier()
        # 100 steps: too short for the l2 default cosine decay, which halves the mean learning rate
        CertifiedJacobianTrainer(clf, norm=norm, eps=eps, seed=0, verbose=False, lr_schedule="constant").fit(
            x, y, nb_epochs=EPOCHS, batch_size=64
        )
        out[norm] = clf
    return out


def _ball_samples(x: np.ndarray, radius: float, norm: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random points of the ball (half on its boundary, l-inf: corners) intersected with the [0, 1] box."""
    shape = (n, *x.shape[1:])
    if norm == np.inf:
        delta = rng.uniform(-radius, radius, size=shape)
        delta[: n // 2] = radius * np.sign(delta[: n // 2])
    else:
        direction = rng.normal(size=(n, x[0].size))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        scale = np.ones(n)
        scale[n // 2 :] = rng.uniform(size=n - n // 2) ** (1.0 / x[0].size)
        delta = (radius * (1 - 1e-6) * scale[:, None] * direction).reshape(shape)
    points = np.clip(x.astype(np.float64) + delta, 0.0, 1.0).astype(np.float32)
    over = np.abs(points.astype(np.float64) - x) > radius  # float32 rounding, l-inf only
    points[over] = np.nextafter(points[over], np.broadcast_to(x, points.shape)[over])
    return points


def _broken(clf, x: np.ndarray, pred: np.ndarray, radius: np.ndarray, norm: float) -> list[int]:
    """Indices ``i`` (with ``radius[i] > 0``) where an attack or a ball sample at ``radius[i]`` changes ``pred[i]``."""
    rng = np.random.default_rng(0)
    broken = []
    for i in np.flatnonzero(radius > 0):
        xi, yi, r = x[i : i + 1], pred[i : i + 1], float(radius[i])
        changed = any(run_attack(clf, xi, yi, r, norm, a, attack_params=p).success[0] for a, p in ATTACKS.items())
        if not changed:
            _, sample_pred = evaluate(clf, _ball_samples(xi, r, norm, 64, rng), np.repeat(yi, 64))
            changed = bool(np.any(sample_pred != yi[0]))
        if changed:
            broken.append(int(i))
    return broken


def _certify(clf, x: np.ndarray, norm: float) -> tuple[np.ndarray, np.ndarray]:
    return JacobianBoundReporter.from_classifier(clf, verbose=False).certify(x, norm=norm, method="interval")


@pytest.mark.parametrize("norm", [2.0, np.inf])
def test_no_attack_beats_a_certificate_of_a_certifiably_trained_model(models, mnist, norm):
    x = mnist[2]
    pred, radius = _certify(models[norm], x, norm)
    assert np.sum(radius > 0) >= N_TEST // 3
    assert _broken(models[norm], x, pred, radius, norm) == []


def test_a_halved_training_bound_is_beaten_by_the_same_attacks(models, mnist):
    """The training bound with its Lipschitz term halved claims twice the training radius: attacks must beat it."""
    clf, x = models[2.0], mnist[2]
    margins = CertifiedMargins(clf.model, (1, 28, 28), PRE, (0.0, 1.0))
    with torch.no_grad():
        for _ in range(50):  # converge the power iteration
            margins.layer_norms(2.0)
        xt = torch.as_tensor(x)
        pred = clf.predict(x).argmax(1)
        logits, low = margins.margin_lower(xt, torch.as_tensor(pred), 1.0, 2.0, "global")
        margin = logits.gather(1, torch.as_tensor(pred)[:, None]) - logits
        lip = (margin - low).numpy()  # low = margin - eps * lip at eps 1
    others = np.arange(10)[None] != pred[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        wrong = np.where(others, margin.numpy() / (lip / 2), np.inf).min(axis=1)
    assert len(_broken(clf, x, pred, wrong, 2.0)) >= 3


@pytest.mark.parametrize(("norm", "margin"), [(2.0, 0.08), (np.inf, 0.15)])
def test_certified_training_certifies_clearly_more_than_plain_training(models, mnist, norm, margin):
    x, y = mnist[2], mnist[3]
    eps = SETTINGS[norm]
    rates = {}
    for name in ("plain", norm):
        pred, radius = _certify(models[name], x, norm)
        rates[name] = float(np.mean((pred == y) & (radius >= eps)))
    assert rates[norm] >= rates["plain"] + margin, rates


def test_history_schedule_and_art_conventions(mnist):
    x, y = mnist[0][:256], mnist[1][:256]
    clf = _classifier(1)
    before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    x_copy = x.copy()
    trainer = CertifiedJacobianTrainer(clf, norm="inf", eps=0.05, seed=3, verbose=False, reg_weight=0.001, n_rows=1)
    assert trainer.get_params()["kappa_start"] == 1.0 and trainer.get_params()["train_eps_factor"] == 1.3
    trainer.fit(x, y, validation_data=(mnist[2], mnist[3]), batch_size=64, nb_epochs=4)
    hist = trainer.history
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    # Ramp over half the 16 steps to 0.065 (1.3 eps): mean eps per epoch grows, then stays at the training radius.
    assert hist[0]["eps"] < hist[1]["eps"] < hist[2]["eps"] == pytest.approx(0.065, rel=1e-6)
    assert all(h["regularizer"] is not None and h["val_accuracy"] is not None for h in hist)
    assert np.array_equal(x, x_copy)
    assert any(not torch.equal(before[k], v) for k, v in clf.model.state_dict().items())
    # Same seed, same data: the same weights.
    clf2 = _classifier(1)
    CertifiedJacobianTrainer(clf2, norm="inf", eps=0.05, seed=3, verbose=False, reg_weight=0.001, n_rows=1).fit(
        x, y, batch_size=64, nb_epochs=4
    )
    for a, b in zip(clf.model.parameters(), clf2.model.parameters(), strict=True):
        assert torch.equal(a, b)


class _Interruptible(torch.optim.lr_scheduler.StepLR):
    """A constant learning rate whose ``step`` raises after ``stop_after`` epochs (a killed run)."""

    def __init__(self, optimizer, stop_after: int | None = None) -> None:
        self.stop_after = stop_after  # before StepLR's constructor, which calls step()
        super().__init__(optimizer, step_size=1000)

    def step(self, *args, **kwargs) -> None:
        if self.stop_after is not None and self.last_epoch == self.stop_after:
            raise RuntimeError("interrupted")
        super().step(*args, **kwargs)

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k != "stop_after"}


def test_checkpoint_resume_continues_the_schedule(mnist, tmp_path):
    x, y = mnist[0][:128], mnist[1][:128]
    path = tmp_path / "run.ckpt"

    def run(stop_after=None, checkpoint=None):
        clf = _classifier(2)
        trainer = CertifiedJacobianTrainer(clf, norm="inf", eps=0.05, seed=1, verbose=False)
        scheduler = _Interruptible(clf.optimizer, stop_after)
        trainer.fit(x, y, batch_size=64, nb_epochs=3, scheduler=scheduler, checkpoint=checkpoint)
        return clf, trainer

    straight, _ = run()
    with pytest.raises(RuntimeError, match="interrupted"):
        run(stop_after=2, checkpoint=path)  # killed during epoch 3, after the checkpoint of epoch 2
    resumed, trainer = run(checkpoint=path)
    assert [h["epoch"] for h in trainer.history] == [1, 2, 3]
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)  # l-inf IBP has no power iteration: the resumed run is bit-identical
    other = CertifiedJacobianTrainer(_classifier(2), norm="inf", eps=0.1, seed=1, verbose=False)
    with pytest.raises(ValueError, match="run.ckpt"):
        other.fit(x, y, batch_size=64, nb_epochs=3, checkpoint=path)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"eps": 0.0}, ValueError, "eps"),
        ({"eps": "big"}, TypeError, "eps"),
        ({"bound": "tight"}, ValueError, "bound"),
        ({"loss": "hinge"}, ValueError, "loss"),
        ({"ramp": 1.5}, ValueError, "ramp"),
        ({"warmup": 1.0}, ValueError, "warmup"),
        ({"kappa": -0.1}, ValueError, "kappa"),
        ({"train_eps_factor": 0.5}, ValueError, "train_eps_factor"),
        ({"depth": 0}, ValueError, "depth"),
        ({"crown": True}, ValueError, "crown"),
        ({"reg_weight": -1.0}, ValueError, "reg_weight"),
        ({"norm": 3}, ValueError, "norm"),
        ({"seed": -1}, ValueError, "seed"),
        ({"lr_schedule": "linear"}, ValueError, "lr_schedule"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, error, name):
    with pytest.raises(error, match=f"`{name}"):
        CertifiedJacobianTrainer(_classifier(), **kwargs)


def test_set_params_validates_atomically_and_norm_switches_defaults():
    trainer = CertifiedJacobianTrainer(_classifier(), norm=2, eps=0.3, verbose=False)
    assert trainer.get_params()["bound"] == "global" and trainer.get_params()["ramp"] == 0.25
    with pytest.raises(ValueError, match="`ramp`"):
        trainer.set_params(eps=0.5, ramp=2.0)
    assert trainer.eps == 0.3 and trainer.ramp == 0.25
    trainer.set_params(norm=np.inf, eps=0.1)
    assert trainer.ramp == 0.5 and trainer.kappa == 0.0 and trainer.kappa_start == 1.0
    with pytest.raises(ValueError, match="Unexpected parameter"):
        trainer.set_params(lr=0.1)


def test_builtin_cosine_learning_rate_decays_per_epoch_and_is_given_back(mnist, tmp_path):
    x, y = mnist[0][:128], mnist[1][:128]
    clf = _classifier(4)
    trainer = CertifiedJacobianTrainer(clf, norm=2, eps=0.3, seed=0, verbose=False)
    assert trainer.get_params()["lr_schedule"] == "cosine"  # the l2 default
    groups = clf.optimizer.param_groups
    assert all(g["lr"] == 1e-3 and "initial_lr" not in g for g in groups)
    trainer.fit(x, y, batch_size=64, nb_epochs=4)
    rates = [h["learning_rate"] for h in trainer.history]
    expected = [1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert rates == pytest.approx(expected, rel=1e-6)
    assert all(g["lr"] == 1e-3 and "initial_lr" not in g for g in groups)  # the optimizer as found
    # a scheduler given to fit replaces the built-in one; "constant" keeps the rate
    trainer.fit(x, y, batch_size=64, nb_epochs=2, scheduler=torch.optim.lr_scheduler.StepLR(clf.optimizer, 1, 0.5))
    assert [h["learning_rate"] for h in trainer.history] == pytest.approx([1e-3, 5e-4])
    for g in groups:
        g["lr"] = 1e-3
    for params in ({"lr_schedule": "constant"}, {"norm": np.inf, "eps": 0.05, "lr_schedule": "constant"}):
        trainer.set_params(**params)
        trainer.fit(x, y, batch_size=64, nb_epochs=2)
        assert [h["learning_rate"] for h in trainer.history] == pytest.approx([1e-3, 1e-3])


def test_builtin_step_learning_rate_drops_after_three_quarters_of_the_epochs(mnist):
    x, y = mnist[0][:128], mnist[1][:128]
    clf = _classifier(4)
    trainer = CertifiedJacobianTrainer(clf, norm=np.inf, eps=0.1, seed=0, verbose=False)
    assert trainer.get_params()["lr_schedule"] == "step"  # the l-inf default
    trainer.fit(x, y, batch_size=64, nb_epochs=4)
    assert [h["learning_rate"] for h in trainer.history] == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4])
    assert all(g["lr"] == 1e-3 and "initial_lr" not in g for g in clf.optimizer.param_groups)
    with pytest.raises(ValueError, match="lr_schedule"):
        trainer.set_params(lr_schedule="linear")


def test_unsupported_model_is_refused_naming_the_model():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10), torch.nn.Tanh())
    with pytest.raises(ValueError, match="classifier.model"):
        CertifiedJacobianTrainer(make_classifier(model, preprocessing=PRE))


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        (x, y), _, _, _ = load_mnist()
        clf = make_classifier(mnist_mlp(seed=0, hidden=16), preprocessing=PRE)
        trainer = CertifiedJacobianTrainer(clf, norm=2, eps=0.3, seed=0, verbose=False, reg_weight=0.001)
        trainer.fit(x[:256], y[:256], batch_size=32, nb_epochs=2)
        flat = torch.cat([p.detach().flatten() for p in clf.model.parameters()])
        torch.save((flat, type(clf.model).__name__, trainer.history), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_data_parallel_ranks_end_with_identical_weights(tmp_path):
    """Two gloo ranks train on different shards; identical final weights need the gradient all-reduce (the bounds
    are computed from the plain module, the logits through the DistributedDataParallel wrapper)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in range(2)]
    assert torch.equal(ranks[0][0], ranks[1][0])
    assert ranks[0][1] == "Sequential"  # a plain module again after the run
    histories = [[{k: v for k, v in h.items() if k != "seconds"} for h in r[2]] for r in ranks]
    assert histories[0] == histories[1] and len(histories[0]) == 2  # the same (global) history on both ranks
