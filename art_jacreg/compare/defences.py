"""The defences the harness compares, and the adapters that run ART's trainers around their known defects.

Every defence starts from the same ``mnist_cnn(seed)`` weights and (except FBF, see below) the same optimizer, and
returns a trained ``nn.Sequential`` of that architecture, so every model is then evaluated by exactly the same code.
ART is never patched: each adaptation is a change of what is *passed* to ART, and every one is recorded in the
result's ``adaptations`` list (see :data:`ADAPTATIONS` for the full catalogue and the defects they avoid, verified
in ``ART-NOTES.md``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from art_jacreg._art import seeded

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTATIONS",
    "DEFENCES",
    "DefenceSpec",
    "TrainContext",
    "TrainOutcome",
    "get_defence",
    "list_defences",
    "register_defence",
    "seeded",
    "train_defence",
]

#: Every adaptation the harness makes around ART 1.20.1, keyed by trainer.
ADAPTATIONS: dict[str, list[str]] = {
    "plain": ["none: PyTorchClassifier.fit with the shared optimizer"],
    "fgsm": ["none needed: AdversarialTrainer(FastGradientMethod, ratio=0.5) with eps in [0, 1] pixel units"],
    "madry": [
        "eps, eps_step set for [0, 1] inputs (ART's defaults eps=8, eps_step=2 assume 0-255 pixels)",
        "nb_epochs/batch_size passed explicitly to fit (ART's default nb_epochs=205)",
    ],
    "pgd": [
        "AdversarialTrainer(ProjectedGradientDescent, ratio=1.0): Madry's PGD training in l2, which "
        "AdversarialTrainerMadryPGD cannot do (it has no norm parameter)"
    ],
    "trades": [
        "model wrapped in a non-Sequential nn.Module (TRADES reads accuracy from _model(x)[0], the first layer's "
        "output for nn.Sequential, and crashes)",
        "no LR scheduler passed (TRADES rejects torch-2 schedulers: isinstance(_LRScheduler) check)",
    ],
    "fbf": [
        "model wrapped in a non-Sequential nn.Module (FBF reads accuracy from _model(x)[0] and crashes on "
        "nn.Sequential)",
        "labels passed one-hot (FBF's loss_gradient raises IndexError on index labels)",
        "optimizer SGD(momentum=0.9, weight_decay=5e-4) instead of Adam: FBF overwrites the learning rate with its "
        "own cyclic schedule peaking at 0.21 (an SGD value; Adam diverges at it)",
        "l-inf only (FBF has no norm parameter)",
    ],
    "awp": [
        "proxy classifier = deep copy of the model with its own SGD(lr=0.01) optimizer (ART requires one)",
        "ART_DATA_PATH pointed at a temporary directory during fit (AWP writes checkpoints there) and restored",
        "no LR scheduler passed (AWP rejects torch-2 schedulers)",
    ],
    "ibp": [
        "model rebuilt as a non-Sequential nn.Module with only Conv2d/ReLU/Linear children and the flatten inside "
        "forward (PyTorchIBPClassifier refuses nn.Flatten children)",
        "trained weights copied back from ART's converted interval layers into mnist_cnn (checked to reproduce the "
        "logits) so the model is evaluated like the others",
        "a fresh model instance is given to ART (the conversion leaves forward hooks on the model's children)",
        "ART's print() calls during conversion are captured; limits=[0, 1] passed (required)",
        "l-inf only (IBP boxes); bound in normalised units equals raw units with preprocessing (0, 1)",
    ],
    "jr": ["none: art_jacreg.JacobianRegularizedTrainer"],
}


@dataclass(frozen=True)
class DefenceSpec:
    """One entry of the defence registry.

    :ivar name: Registry name (used on the command line).
    :ivar trainer: Adapter key: ``plain``, ``fgsm``, ``madry``, ``pgd``, ``trades``, ``fbf``, ``awp``, ``ibp``
        or ``jr``.
    :ivar norm: Threat model it trains against (``2.0``, ``inf``) or ``None`` (plain training).
    :ivar params: Trainer-specific parameters (e.g. ``reg_weight``, ``max_iter``, ``beta``).
    :ivar description: One line for ``--list-defences``.
    """

    name: str
    trainer: str
    norm: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def config(self) -> dict[str, Any]:
        """The fields that determine the trained model (used in the cache key).

        :return: A JSON-serialisable dict.
        """
        norm = None if self.norm is None else ("inf" if self.norm == np.inf else "2")
        return {"name": self.name, "trainer": self.trainer, "norm": norm, "params": dict(sorted(self.params.items()))}


@dataclass
class TrainContext:
    """What every adapter gets: data, budget and seed, identical across defences.

    :ivar x: Training inputs ``(N, 1, 28, 28)`` in ``[0, 1]``.
    :ivar y: One-hot labels ``(N, 10)``.
    :ivar epochs: Epoch budget.
    :ivar batch_size: Mini-batch size.
    :ivar lr: Adam learning rate.
    :ivar seed: Seed of the initial weights and of every random generator during training.
    :ivar train_eps: Training perturbation size per norm, keys ``"2"`` and ``"inf"``.
    :ivar verbose: Let the trainers show their progress bars.
    """

    x: np.ndarray
    y: np.ndarray
    epochs: int
    batch_size: int
    lr: float
    seed: int
    train_eps: dict[str, float]
    verbose: bool = False


@dataclass
class TrainOutcome:
    """An adapter's result.

    :ivar model: The trained ``mnist_cnn``-architecture ``nn.Sequential``.
    :ivar seconds: Wall-clock training time.
    :ivar train_eps: Perturbation size trained against (``None`` for plain and Jacobian-regularized training).
    :ivar adaptations: What the harness did around ART for this defence.
    :ivar details: Extra trainer settings actually used (attack steps, beta, ...).
    """

    model: Any
    seconds: float
    train_eps: float | None
    adaptations: list[str]
    details: dict[str, Any]


def _norm_key(norm: float | None) -> str | None:
    return None if norm is None else ("inf" if norm == np.inf else "2")


DEFENCES: dict[str, DefenceSpec] = {}


def register_defence(spec: DefenceSpec) -> DefenceSpec:
    """Add a defence to :data:`DEFENCES` (replacing one of the same name).

    :param spec: The defence.
    :return: ``spec``.
    :raises ValueError: If ``spec.trainer`` has no adapter.
    """
    if spec.trainer not in _ADAPTERS:
        raise ValueError(f"`spec.trainer` must be one of {sorted(_ADAPTERS)}, got {spec.trainer!r}.")
    DEFENCES[spec.name] = spec
    return spec


def list_defences() -> list[str]:
    """Names of the registered defences, in registry order.

    :return: The names.
    """
    return list(DEFENCES)


def get_defence(name: str) -> DefenceSpec:
    """Look a defence up by name.

    :param name: A name from :func:`list_defences`.
    :return: The spec.
    :raises ValueError: For an unknown name (the message lists the known ones).
    """
    if name not in DEFENCES:
        raise ValueError(f"unknown defence {name!r}; known defences: {', '.join(DEFENCES)}.")
    return DEFENCES[name]


# ---------------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet_streams(quiet: bool) -> Iterator[None]:
    """Send stdout/stderr (ART's unconditional tqdm bars and print calls) to a buffer when ``quiet``."""
    if not quiet:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


@contextlib.contextmanager
def _art_data_path(path: str) -> Iterator[None]:
    """Point ART_DATA_PATH at ``path`` for the block and restore the previous value."""
    from art import config

    previous = config.ART_DATA_PATH
    config.set_data_path(path)
    try:
        yield
    finally:
        config.set_data_path(previous)


def _classifier(model: Any, ctx: TrainContext, optimizer: Any = None) -> Any:
    from art_jacreg.models import make_classifier

    return make_classifier(model, lr=ctx.lr, optimizer=optimizer)


class _NonSequential:
    """Factory of a non-Sequential wrapper (defined lazily so importing this module does not import torch)."""

    @staticmethod
    def wrap(net: Any) -> Any:
        from torch import nn

        class NonSequential(nn.Module):
            """``forward = net``; ART's ModelWrapper then returns ``[logits]`` so ``[0]`` and ``[-1]`` agree."""

            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: Any) -> Any:
                return self.inner(x)

        return NonSequential(net)


def _pgd(classifier: Any, norm: float, eps: float, max_iter: int, random_init: int = 1) -> Any:
    from art.attacks.evasion import ProjectedGradientDescent

    return ProjectedGradientDescent(
        classifier,
        norm=norm,
        eps=eps,
        eps_step=2.5 * eps / max_iter,
        max_iter=max_iter,
        num_random_init=random_init,
        batch_size=512,
        verbose=False,
    )


# ---------------------------------------------------------------------------------------------------- adapters


def _train_plain(spec: DefenceSpec, ctx: TrainContext, model: Any) -> dict[str, Any]:
    clf = _classifier(model, ctx)
    clf.fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs, verbose=ctx.verbose)
    return {}


def _train_fgsm(spec: DefenceSpec, ctx: TrainContext, model: Any) -> dict[str, Any]:
    from art.attacks.evasion import FastGradientMethod
    from art.defences.trainer import AdversarialTrainer

    clf = _classifier(model, ctx)
    eps = ctx.train_eps[_norm_key(spec.norm)]
    attack = FastGradientMethod(clf, norm=spec.norm, eps=eps, batch_size=512)
    ratio = spec.params.get("ratio", 0.5)
    AdversarialTrainer(clf, attack, ratio=ratio).fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs)
    return {"ratio": ratio}


def _train_madry(spec: DefenceSpec, ctx: TrainContext, model: Any) -> dict[str, Any]:
    from art.defences.trainer import AdversarialTrainerMadryPGD

    clf = _classifier(model, ctx)
    eps = ctx.train_eps["inf"]
    max_iter = spec.params.get("max_iter", 7)
    trainer = AdversarialTrainerMadryPGD(
        clf, nb_epochs=ctx.epochs, batch_size=ctx.batch_size, eps=eps, eps_step=2.5 * eps / max_iter, max_iter=max_iter
    )
    trainer.fit(ctx.x, ctx.y, nb_epochs=ctx.epochs, batch_size=ctx.batch_size)
    return {"max_iter": max_iter, "eps_step": 2.5 * eps / max_iter}


def _train_pgd(spec: DefenceSpec, ctx: TrainContext, model: Any) -> dict[str, Any]:
    from art.defences.trainer import AdversarialTrainer

    clf = _classifier(model, ctx)
    eps = ctx.train_eps[_norm_key(spec.norm)]
    max_iter = spec.params.get("max_iter", 7)
    attack = _pgd(clf, spec.norm, eps, max_iter)
    AdversarialTrainer(clf, attack, ratio=1.0).fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs)
    return {"max_iter": max_iter, "eps_step": 2.5 * eps / max_iter}


def _train_trades(spec: DefenceSpec, ctx: TrainContext, model: Any) -> dict[str, Any]:
    from art.defences.trainer import AdversarialTrainerTRADESPyTorch

    clf = _classifier(_NonSequential.wrap(model), ctx)
    eps = ctx.train_eps[_norm_key(spec.norm)]
    max_iter, beta = spec.params.get("max_iter", 7), spec.params.get("beta", 6.0)
    trainer = AdversarialTrainerTRADESPyTorch(clf, _pgd(clf, spec.norm, eps, max_iter), beta=beta)
    trainer.fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs)
    return {"max_iter": max_iter, "beta": beta}


def _train_fbf(spec: DefenceSpec, ctx: TrainContext, model: Any) -> dict[str, Any]:
    import torch
    from art.defences.trainer import AdversarialTrainerFBFPyTorch

    wrapped = _NonSequential.wrap(model)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    clf = _classifier(wrapped, ctx, optimizer=optimizer)
    eps = ctx.train_eps["inf"]
    AdversarialTrainerFBFPyTorch(clf, eps=eps).fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs)
    return {"optimizer": "SGD(momentum=0.9, weight_decay=5e-4), FBF's cyclic lr (peak 0.21)"}


def _train_awp(spec: DefenceSpec, ctx: TrainContext, model: Any) -> dict[str, Any]:
    import torch
    from art.defences.trainer import AdversarialTrainerAWPPyTorch

    clf = _classifier(model, ctx)
    proxy_model = copy.deepcopy(model)
    proxy = _classifier(proxy_model, ctx, optimizer=torch.optim.SGD(proxy_model.parameters(), lr=0.01))
    eps = ctx.train_eps[_norm_key(spec.norm)]
    max_iter = spec.params.get("max_iter", 7)
    gamma, warmup = spec.params.get("gamma", 0.005), spec.params.get("warmup", 0)
    trainer = AdversarialTrainerAWPPyTorch(
        clf, proxy, _pgd(clf, spec.norm, eps, max_iter), mode="PGD", gamma=gamma, beta=6.0, warmup=warmup
    )
    with tempfile.TemporaryDirectory(prefix="art-jacreg-awp-") as tmp, _art_data_path(tmp):
        trainer.fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs)
    return {"max_iter": max_iter, "gamma": gamma, "warmup": warmup, "mode": "PGD"}


def _ibp_net(seq: Any) -> Any:
    """The IBP-compatible twin of ``mnist_cnn``: same children minus Flatten, flatten inside ``forward``."""
    from torch import nn

    class IBPNet(nn.Module):
        """Conv-ReLU-Conv-ReLU-(flatten)-Linear-ReLU-Linear with ``nn.Flatten`` moved into ``forward``."""

        def __init__(self) -> None:
            super().__init__()
            layers = [copy.deepcopy(m) for m in seq if not isinstance(m, nn.Flatten)]
            self.conv1, self.relu1, self.conv2, self.relu2, self.fc1, self.relu3, self.fc2 = layers

        def forward(self, x: Any) -> Any:
            x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
            return self.fc2(self.relu3(self.fc1(x.reshape(x.shape[0], -1))))

    return IBPNet()


def _copy_back_ibp(ibp_clf: Any, seq: Any, x_check: np.ndarray) -> None:
    """Copy the trained interval layers of ART's converted model into ``seq`` and check the logits agree."""
    import torch
    from art.estimators.certification.interval.interval import PyTorchIntervalConv2D, PyTorchIntervalDense
    from torch import nn

    ops = list(ibp_clf.model.ops)
    targets = [m for m in seq if isinstance(m, (nn.Conv2d, nn.Linear))]
    sources = [op for op in ops if isinstance(op, (PyTorchIntervalConv2D, PyTorchIntervalDense))]
    if len(targets) != len(sources):
        raise RuntimeError(f"IBP conversion produced {len(sources)} affine layers, expected {len(targets)}.")
    with torch.no_grad():
        for dst, src in zip(targets, sources):
            if isinstance(dst, nn.Conv2d):
                dst.weight.copy_(src.conv.weight.reshape(dst.weight.shape))
                dst.bias.copy_(src.bias_to_grad)
            else:
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
    ibp_clf.model.set_forward_mode("concrete")
    expected = ibp_clf.predict(x_check)
    with torch.no_grad():
        got = seq.eval()(torch.from_numpy(x_check)).numpy()
    if not np.allclose(got, expected, atol=1e-3, rtol=1e-3):
        raise RuntimeError("copying the IBP-trained weights back into mnist_cnn did not reproduce ART's logits.")


def _train_ibp(spec: DefenceSpec, ctx: TrainContext, model: Any) -> dict[str, Any]:
    import warnings

    import torch
    from art.defences.trainer import AdversarialTrainerCertifiedIBPPyTorch
    from art.estimators.certification.interval import PyTorchIBPClassifier

    net = _ibp_net(model)
    eps = ctx.train_eps["inf"]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        ibp_clf = PyTorchIBPClassifier(
            model=net,
            loss=torch.nn.CrossEntropyLoss(),
            input_shape=(1, 28, 28),
            nb_classes=10,
            optimizer=torch.optim.Adam(net.parameters(), lr=ctx.lr),
            clip_values=(0.0, 1.0),
            device_type="cpu",
        )
    trainer = AdversarialTrainerCertifiedIBPPyTorch(ibp_clf, nb_epochs=ctx.epochs, bound=eps, batch_size=ctx.batch_size)
    trainer.fit(ctx.x, ctx.y, limits=[0.0, 1.0], nb_epochs=ctx.epochs, batch_size=ctx.batch_size, verbose=False)
    _copy_back_ibp(ibp_clf, model, ctx.x[:16])
    return {"bound": eps, "certification_schedule": "ART default (linear ramp over 30% of the epochs)"}


def _train_jr(spec: DefenceSpec, ctx: TrainContext, model: Any) -> dict[str, Any]:
    from art_jacreg.trainer import JacobianRegularizedTrainer

    clf = _classifier(model, ctx)
    params = {"reg_weight": spec.params.get("reg_weight"), "n_projections": spec.params.get("n_projections", 1)}
    if spec.norm == np.inf:
        params = {"reg_weight": spec.params.get("reg_weight"), "n_rows": spec.params.get("n_rows", 1)}
    trainer = JacobianRegularizedTrainer(clf, norm=spec.norm, seed=ctx.seed, verbose=ctx.verbose, **params)
    trainer.fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs)
    return {**params, "reg_weight": trainer.reg_weight}


_ADAPTERS: dict[str, Callable[[DefenceSpec, TrainContext, Any], dict[str, Any]]] = {
    "plain": _train_plain,
    "fgsm": _train_fgsm,
    "madry": _train_madry,
    "pgd": _train_pgd,
    "trades": _train_trades,
    "fbf": _train_fbf,
    "awp": _train_awp,
    "ibp": _train_ibp,
    "jr": _train_jr,
}


def train_defence(spec: DefenceSpec, ctx: TrainContext) -> TrainOutcome:
    """Train ``mnist_cnn(ctx.seed)`` with the defence ``spec`` and return the trained model.

    :param spec: The defence.
    :param ctx: Data, budget and seed.
    :return: :class:`TrainOutcome` (the model is an ``nn.Sequential`` with ``mnist_cnn``'s architecture).
    :raises Exception: Whatever the trainer raises; the harness turns it into an error row.
    """
    from art_jacreg.models import mnist_cnn

    adapter = _ADAPTERS[spec.trainer]
    logger.info("training %s (%s, %d epochs)", spec.name, spec.trainer, ctx.epochs)
    with seeded(ctx.seed), _quiet_streams(not ctx.verbose):
        model = mnist_cnn(seed=ctx.seed)  # inside `seeded`: the caller's global torch generator is left alone
        start = time.perf_counter()
        details = adapter(spec, ctx, model)
        seconds = time.perf_counter() - start
    model.eval()
    # JR has no attack and no eps: its threat norm only selects the regulariser.
    train_eps = None if spec.norm is None or spec.trainer == "jr" else ctx.train_eps[_norm_key(spec.norm)]
    return TrainOutcome(model, seconds, train_eps, list(ADAPTATIONS[spec.trainer]), details)


def _builtin() -> None:
    inf = float(np.inf)
    specs = [
        DefenceSpec("plain", "plain", None, {}, "plain cross-entropy training (PyTorchClassifier.fit)"),
        DefenceSpec("fgsm", "fgsm", inf, {"ratio": 0.5}, "ART AdversarialTrainer with FGSM (l-inf), ratio 0.5"),
        DefenceSpec("madry", "madry", inf, {"max_iter": 7}, "ART AdversarialTrainerMadryPGD (l-inf PGD-7)"),
        DefenceSpec("pgd-l2", "pgd", 2.0, {"max_iter": 7}, "ART AdversarialTrainer with l2 PGD-7, ratio 1.0"),
        DefenceSpec("trades", "trades", inf, {"max_iter": 7, "beta": 6.0}, "ART TRADES (l-inf PGD-7, beta 6)"),
        DefenceSpec("fbf", "fbf", inf, {}, "ART Fast-is-better-than-Free (l-inf FGSM with random start)"),
        DefenceSpec("awp", "awp", inf, {"max_iter": 7, "gamma": 0.005, "warmup": 0}, "ART AWP, PGD mode (l-inf)"),
        DefenceSpec("ibp", "ibp", inf, {}, "ART certified IBP training (l-inf boxes)"),
    ]
    for weight in (0.001, 0.01, 0.1):
        specs.append(
            DefenceSpec(
                f"jr-l2-{weight:g}",
                "jr",
                2.0,
                {"reg_weight": weight, "n_projections": 1},
                f"Jacobian regularization, ||J||_F^2, weight {weight:g} (1 random projection)",
            )
        )
    for weight in (0.0003, 0.001, 0.003):
        specs.append(
            DefenceSpec(
                f"jr-linf-{weight:g}",
                "jr",
                inf,
                {"reg_weight": weight, "n_rows": 1},
                f"Jacobian regularization, ||J||_11, weight {weight:g} (1 sampled row)",
            )
        )
    for spec in specs:
        register_defence(spec)


_builtin()
