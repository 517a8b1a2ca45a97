"""Soundness of JacobianBoundReporter on trained MNIST models: no attack or sample may beat a certificate.

Two small CNNs are trained once per module on 1,000 embedded-MNIST digits: a plain one with ART preprocessing
``(0.1307, 0.3081)`` and a Jacobian-regularised one with identity preprocessing. For every certified ``(x, radius)``
(up to ``N_ATTACKED`` points per model, norm and method) the ball of that radius is attacked with ART PGD, ART
AutoAttack (APGD-CE + APGD-DLR) and torchattacks APGD, and sampled at random; no prediction may change, no loss may
exceed ``certified_loss_bound`` and every logit must lie in ``predict_bounds``.

Tolerance ``TOL = 1e-4`` (absolute, on logits and cross-entropies of magnitude below ~30): the certifiers and the
model evaluate the same float32 network in different orders, which moves results by a few float32 ulps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from art.attacks.evasion import AutoProjectedGradientDescent, DeepFool, FastGradientMethod, ProjectedGradientDescent
from art.metrics import clever_u
from torch import nn

from art_jacreg import JacobianBoundReporter
from art_jacreg.attacks import evaluate, run_attack
from art_jacreg.certify import certified_loss_bound
from art_jacreg.data import load_mnist
from art_jacreg.models import make_classifier, mnist_cnn, mnist_mlp
from art_jacreg.trainer import JacobianRegularizedTrainer

TOL = 1e-4
N_POINTS = 30
N_ATTACKED = 3
N_SAMPLES = 64
ATTACKS = {"pgd": {"max_iter": 20}, "autoattack": {"max_iter": 20}, "torchattacks": {"steps": 20}}
EPS = {2.0: 0.5, np.inf: 0.03}


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    (x_train, y_train), (x_test, y_test), _, _ = load_mnist()
    return x_train[:1000], y_train[:1000], x_test[:N_POINTS], y_test[:N_POINTS].argmax(1)


@pytest.fixture(scope="module")
def reporters(mnist) -> dict[str, JacobianBoundReporter]:
    x_train, y_train, _, _ = mnist
    torch.manual_seed(0)
    plain = make_classifier(mnist_cnn(seed=0), preprocessing=(0.1307, 0.3081))
    plain.fit(x_train, y_train, nb_epochs=2, batch_size=64)
    jr = make_classifier(mnist_cnn(seed=1))
    JacobianRegularizedTrainer(jr, norm=2, reg_weight=0.05, seed=0, verbose=False).fit(
        x_train, y_train, nb_epochs=2, batch_size=64
    )
    # CROWN ("linear") on the CNN costs ~10 s per certified radius, so it is mostly tested on a small MLP.
    mlp = make_classifier(mnist_mlp(seed=2, hidden=32), preprocessing=(0.1307, 0.3081))
    mlp.fit(x_train, y_train, nb_epochs=2, batch_size=64)
    return {
        name: JacobianBoundReporter.from_classifier(c, verbose=False)
        for name, c in (("plain", plain), ("jr", jr), ("mlp", mlp))
    }


@pytest.fixture(scope="module")
def certified(reporters, mnist) -> Callable[[str, float, str, int], tuple[np.ndarray, np.ndarray]]:
    """Memoised ``certify`` on the first ``n`` test points."""
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def get(name: str, norm: float, method: str, n: int = N_POINTS) -> tuple[np.ndarray, np.ndarray]:
        key = (name, norm, method, n)
        if key not in cache:
            cache[key] = reporters[name].certify(mnist[2][:n], norm=norm, method=method)
        return cache[key]

    return get


def _ball_samples(x: np.ndarray, radius: float, norm: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random points of the ball (half on its boundary) intersected with the [0, 1] box."""
    shape = (n, *x.shape[1:])
    if norm == np.inf:
        delta = rng.uniform(-radius, radius, size=shape)
        delta[: n // 2] = radius * np.sign(delta[: n // 2])  # corners
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


CASES = [
    (name, norm, method, N_POINTS, N_ATTACKED)
    for name in ("plain", "jr")
    for norm in (2.0, np.inf)
    for method in ("lipschitz", "interval")
] + [
    ("mlp", 2.0, "linear", 8, 3),
    ("mlp", np.inf, "linear", 8, 3),
    ("jr", 2.0, "linear", 6, 3),
    ("jr", np.inf, "linear", 6, 3),
]


@pytest.mark.parametrize(("name", "norm", "method", "n_points", "n_attacked"), CASES)
def test_no_attack_or_sample_beats_a_certificate(reporters, mnist, certified, name, norm, method, n_points, n_attacked):
    rep = reporters[name]
    x = mnist[2][:n_points]
    pred, radius = certified(name, norm, method, n_points)
    certified_idx = np.flatnonzero(radius > 0)
    assert certified_idx.size >= n_points // 2, f"only {certified_idx.size} of {n_points} points certified"
    net, clip = rep._network(), rep._clip()
    rng = np.random.default_rng(0)
    for i in certified_idx[:n_attacked]:
        r, xi, yi = float(radius[i]), x[i : i + 1], pred[i : i + 1]
        lower, upper = rep.predict_bounds(xi, r, norm=norm, method=method)[0]
        bound = float(certified_loss_bound(net, torch.as_tensor(xi), torch.as_tensor(yi), r, norm, clip, method)[0])
        points = [_ball_samples(xi, r, norm, N_SAMPLES, rng)]
        for attack, params in ATTACKS.items():
            result = run_attack(rep, xi, yi, r, norm, attack, attack_params=params)
            assert not result.success[0], f"{attack} changed a certified prediction (sample {i}, radius {r})"
            assert result.loss[0] <= bound + TOL, f"{attack} loss {result.loss[0]} > certified bound {bound}"
            points.append(result.x_adv)
        points = np.concatenate(points)
        logits = rep.predict(points)
        loss, pred_points = evaluate(rep, points, np.repeat(yi, len(points)))
        assert np.all(pred_points == yi[0])
        assert np.all(loss <= bound + TOL)
        assert np.all(logits >= lower - TOL) and np.all(logits <= upper + TOL)


@pytest.mark.parametrize("norm", [2.0, np.inf])
def test_report_columns_are_ordered_and_sound(reporters, mnist, norm):
    x, y = mnist[2][:15], mnist[3][:15]
    for rep in (reporters["plain"], reporters["jr"]):
        params = {"max_iter": 20}
        report = rep.report(x, y, EPS[norm], norm=norm, attack="apgd", method="interval", attack_params=params)
        assert np.all(report.loss <= report.first_order_loss)
        assert np.all(report.first_order_loss <= report.jacobian_surrogate_loss)
        assert np.all(report.loss <= report.attack_loss)
        assert np.all(report.attack_loss <= report.certified_loss_bound + TOL)
        assert np.all(report.attack_prediction[report.certified] == report.prediction[report.certified])
        # Interval bounds are inclusion-monotone: certified at a larger radius means certified at eps.
        assert np.all(report.certified[report.certified_radius >= EPS[norm]])
        summary = report.summary()
        assert summary["certificate_violations"] == 0
        assert summary["certified_accuracy"] <= summary["attacked_accuracy"] <= summary["clean_accuracy"]
        assert report.column_kinds["jacobian_surrogate_loss"] == "first-order estimate"


def test_jacobian_regularisation_enlarges_certified_l2_radii(certified):
    # The JR model was trained with the l2 regulariser ||J||_F^2; on the l-inf side the effect is not reliable.
    assert np.median(certified("jr", 2.0, "interval")[1]) > np.median(certified("plain", 2.0, "interval")[1])


def test_interval_is_never_looser_than_lipschitz(certified):
    for name in ("plain", "jr"):
        for norm in (2.0, np.inf):
            r_lip, r_int = certified(name, norm, "lipschitz")[1], certified(name, norm, "interval")[1]
            assert np.all(r_int >= r_lip * (1 - 1e-6))


def test_art_attacks_and_clever_accept_the_reporter(reporters, mnist):
    _, _, x, y = mnist
    rep = reporters["plain"]
    x5, y5 = x[:5], np.eye(10, dtype=np.float32)[y[:5]]
    for attack in (
        FastGradientMethod(rep, eps=0.1),
        ProjectedGradientDescent(rep, eps=0.1, eps_step=0.02, max_iter=5, verbose=False),
        AutoProjectedGradientDescent(rep, eps=0.1, max_iter=5, nb_random_init=1, verbose=False),
        DeepFool(rep, max_iter=5, verbose=False),
    ):
        adv = attack.generate(x5, y=None if isinstance(attack, DeepFool) else y5)
        assert adv.shape == x5.shape and np.all(np.isfinite(adv))
    score = clever_u(rep, x[0], nb_batches=2, batch_size=10, radius=2.0, norm=2, pool_factor=3, verbose=False)
    _, radius = rep.certify(x[:1], norm=2)
    assert 0 <= radius[0] and np.isfinite(score)


# ----------------------------------------------------------------------------------- stale certificates (issue 10)
# A linear classifier without clip_values has a closed-form exact radius, so a certificate computed for stale weights
# is caught exactly: radius_p = min_{j != y} (f_y - f_j) / ||w_y - w_j||_{p*} (p* = 2 for l2, 1 for l-inf).

N_LINEAR = 40


class _FcNet(nn.Module):
    """A linear classifier whose Linear layer is the attribute ``fc`` (so it can be swapped for a new one)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _linear_reporter(model: nn.Module) -> JacobianBoundReporter:
    return JacobianBoundReporter(
        model,
        nn.CrossEntropyLoss(),
        (1, 28, 28),
        10,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        device_type="cpu",
        verbose=False,
    )


def _linear_layer(model: nn.Module) -> nn.Linear:
    return model.fc if isinstance(model, _FcNet) else model[1]


def _exact_radius(model: nn.Module, x: np.ndarray, norm: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact radius (float64) and the direction to the closest decision boundary of a linear model."""
    layer = _linear_layer(model)
    w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    flat = x.reshape(len(x), -1).astype(np.float64)
    logits = flat @ w.T + b
    pred = logits.argmax(1)
    radius, direction = np.empty(len(x)), np.empty_like(flat)
    for i, y in enumerate(pred):
        others = [j for j in range(10) if j != y]
        diff = w[others] - w[y]  # the margin f_y - f_j falls along diff[k]
        dual = np.abs(diff).sum(1) if norm == np.inf else np.linalg.norm(diff, axis=1)
        ratios = (logits[i, y] - logits[i, others]) / dual
        k = int(ratios.argmin())
        radius[i] = ratios[k]
        direction[i] = np.sign(diff[k]) if norm == np.inf else diff[k] / dual[k]
    return radius, direction


@pytest.fixture(scope="module")
def linear_setup() -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Weights of a linear MNIST classifier trained for 3 epochs on 1,000 digits, and 40 test digits."""
    (x_train, y_train), (x_test, _), _, _ = load_mnist()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    _linear_reporter(model).fit(x_train[:1000], y_train[:1000], nb_epochs=3, batch_size=64)
    return {k: v.detach().clone() for k, v in model[1].state_dict().items()}, x_test[:N_LINEAR]


def _noise_like(t: torch.Tensor, seed: int) -> torch.Tensor:
    return 0.004 * torch.randn(t.shape, generator=torch.Generator().manual_seed(seed))


def _edit_data(model: nn.Module) -> None:
    model[1].weight.data.add_(_noise_like(model[1].weight, 1))


def _edit_load_state_dict(model: nn.Module) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["1.weight"] += _noise_like(state["1.weight"], 2)
    model.load_state_dict(state)


def _edit_copy_no_grad(model: nn.Module) -> None:
    with torch.no_grad():
        model[1].weight.copy_(model[1].weight + _noise_like(model[1].weight, 3))


def _edit_numpy_view(model: nn.Module) -> None:
    # Writing through a numpy view bypasses torch's version counter entirely.
    model[1].weight.detach().numpy()[...] += _noise_like(model[1].weight, 4).numpy()


def _edit_swap_submodule(model: nn.Module) -> None:
    old = model.fc
    model.fc = nn.Linear(784, 10)
    with torch.no_grad():
        model.fc.weight.copy_(old.weight + _noise_like(old.weight, 5))
        model.fc.bias.copy_(old.bias)


EDITS = {
    "data": _edit_data,
    "load_state_dict": _edit_load_state_dict,
    "copy_no_grad": _edit_copy_no_grad,
    "numpy_view": _edit_numpy_view,
    "swap_submodule": _edit_swap_submodule,
}


@pytest.mark.parametrize("norm", [2.0, np.inf])
@pytest.mark.parametrize("edit", list(EDITS))
def test_certificates_follow_weight_edits_of_a_linear_model(linear_setup, edit, norm):
    state, x = linear_setup
    if edit == "swap_submodule":
        model: nn.Module = _FcNet()
        model.fc.load_state_dict(state)
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
        model[1].load_state_dict(state)
    rep = _linear_reporter(model)
    _, before = rep.certify(x, norm=norm)
    exact_before, _ = _exact_radius(model, x, norm)
    assert np.all(before <= exact_before)
    EDITS[edit](model)
    exact, _ = _exact_radius(model, x, norm)
    # The edit matters: the old radii would overstate the new exact radius on many points.
    assert np.count_nonzero(before > exact) >= 5
    pred, after = rep.certify(x, norm=norm)
    np.testing.assert_array_equal(pred, rep.predict(x).argmax(1))
    bad = np.flatnonzero(after > exact)
    assert bad.size == 0, f"{bad.size} of {len(x)} radii exceed the exact radius of the new weights"
    # Bisection stops a hair below the exact radius, never far from it.
    assert np.all(after >= 0.99 * exact)
    _, fresh = _linear_reporter(copy.deepcopy(model)).certify(x, norm=norm)
    np.testing.assert_array_equal(after, fresh)


@pytest.mark.parametrize("norm", [2.0, np.inf])
def test_the_exact_linear_radius_is_the_distance_to_the_decision_boundary(linear_setup, norm):
    # Checks the closed form the stale-certificate tests rely on: just past it the prediction changes.
    state, x = linear_setup
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    model[1].load_state_dict(state)
    rep = _linear_reporter(model)
    radius, direction = _exact_radius(model, x, norm)
    pred, certified = rep.certify(x, norm=norm)
    past = (x.reshape(len(x), -1) + (radius * 1.001)[:, None] * direction).astype(np.float32).reshape(x.shape)
    inside = (x.reshape(len(x), -1) + (certified * 0.999)[:, None] * direction).astype(np.float32).reshape(x.shape)
    assert np.all(rep.predict(past).argmax(1) != pred)
    assert np.all(rep.predict(inside).argmax(1) == pred)
