"""API, validation, side-effect and file-format tests of JacobianBoundReporter and BoundReport (fast, small models)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from art.attacks.evasion import FastGradientMethod
from art.estimators.classification import PyTorchClassifier
from torch import nn

from art_jacreg import BoundReport, JacobianBoundReporter
from art_jacreg.certify import UnsupportedOperationError
from art_jacreg.models import make_classifier, mnist_cnn
from art_jacreg.report import COLUMN_KINDS, EMPIRICAL, FIRST_ORDER, SOUND

FAST_ATTACK = {"max_iter": 5}


def _reporter(model: nn.Module | None = None, preprocessing=(0.1307, 0.3081), **kwargs) -> JacobianBoundReporter:
    model = mnist_cnn(seed=0) if model is None else model
    return JacobianBoundReporter(
        model,
        nn.CrossEntropyLoss(),
        (1, 28, 28),
        10,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        clip_values=(0.0, 1.0),
        preprocessing=preprocessing,
        device_type="cpu",
        verbose=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(6, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, size=6)
    return x, y


class _TanhNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(x.flatten(1)))


class _FunctionalNet(nn.Module):
    """Functional ops, pooling, BatchNorm and Dropout (eval), view: all supported by the certifiers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 7 * 7, 10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.1, 0.1)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.relu(self.bn(self.conv(x)))
        h = torch.nn.functional.max_pool2d(h, 2)
        h = torch.nn.functional.avg_pool2d(h, 2)
        return self.fc(self.drop(h.view(h.shape[0], -1)))


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


# ----------------------------------------------------------------------------------- construction and ART contract


def test_is_a_pytorch_classifier_and_from_classifier_predicts_the_same(data):
    x, _ = data
    clf = make_classifier(mnist_cnn(seed=0), preprocessing=(0.1307, 0.3081))
    rep = JacobianBoundReporter.from_classifier(clf, verbose=False)
    assert isinstance(rep, PyTorchClassifier)
    assert rep.model is clf.model and rep.nb_classes == 10 and tuple(rep.input_shape) == (1, 28, 28)
    np.testing.assert_array_equal(rep.predict(x), clf.predict(x))
    np.testing.assert_array_equal(rep.clip_values, clf.clip_values)
    with pytest.raises(TypeError, match="classifier"):
        JacobianBoundReporter.from_classifier(clf.model)


def test_get_set_params_and_clone_for_refitting():
    rep = _reporter()
    params = rep.get_params()
    assert params["verbose"] is False and "preprocessing" in params
    rep.set_params(verbose=True)
    assert rep.verbose is True
    clone = rep.clone_for_refitting()
    assert type(clone) is JacobianBoundReporter and clone.verbose is True
    assert clone.model is not rep.model


# ----------------------------------------------------------------------------------- outputs


def test_certify_and_predict_bounds_shapes_and_containment(data):
    x, _ = data
    rep = _reporter()
    logits = rep.predict(x)
    for norm, method in ((2, "interval"), (np.inf, "lipschitz")):
        pred, radius = rep.certify(x[:3], norm=norm, method=method, batch_size=2)
        assert pred.shape == radius.shape == (3,) and pred.dtype == np.int64
        np.testing.assert_array_equal(pred, logits[:3].argmax(1))
        assert np.all(radius >= 0) and np.all(np.isfinite(radius))
        b0 = rep.predict_bounds(x, 0.0, norm=norm, method=method)
        b1 = rep.predict_bounds(x, 0.05, norm=norm, method=method, batch_size=4)
        assert b0.shape == b1.shape == (6, 2, 10) and b0.dtype == np.float32
        assert np.all(b0[:, 0] <= logits + 1e-4) and np.all(logits <= b0[:, 1] + 1e-4)
        # The ball grows, the bounds widen (sound bounds of a bigger set).
        assert np.all(b1[:, 0] <= b0[:, 0] + 1e-4) and np.all(b1[:, 1] >= b0[:, 1] - 1e-4)


def test_functional_model_with_pooling_batchnorm_dropout_is_certified(data):
    x, _ = data
    model = _FunctionalNet()
    rep = _reporter(model)
    logits = rep.predict(x)  # ART's predict leaves the model in eval mode ...
    model.train()
    pred, radius = rep.certify(x, norm=np.inf, method="interval")
    bounds = rep.predict_bounds(x, 0.0, norm=np.inf)
    assert all(m.training for m in model.modules())  # ... the reporter's methods restore the caller's modes
    np.testing.assert_array_equal(pred, logits.argmax(1))
    assert np.all(radius >= 0)
    assert np.all(bounds[:, 0] <= logits + 1e-4) and np.all(logits <= bounds[:, 1] + 1e-4)


def test_unsupported_model_predicts_and_attacks_but_certify_names_the_operation(data):
    x, y = data
    rep = _reporter(_TanhNet(), preprocessing=(0.0, 1.0))
    assert rep.predict(x).shape == (6, 10)
    adv = FastGradientMethod(rep, eps=0.1).generate(x)
    assert adv.shape == x.shape
    for call in (
        lambda: rep.certify(x),
        lambda: rep.predict_bounds(x, 0.1),
        lambda: rep.report(x, y, 0.1, attack_params=FAST_ATTACK),
    ):
        with pytest.raises(UnsupportedOperationError, match="tanh"):
            call()


def test_model_and_inputs_are_never_modified(data):
    x, y = data
    model = mnist_cnn(seed=3)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rep = _reporter(model)
    x_copy, y_copy = x.copy(), y.copy()
    rep.certify(x, norm=2, method="lipschitz")
    rep.predict_bounds(x, 0.1, norm=np.inf)
    rep.report(x, y, 0.1, norm=2, attack="pgd", method="lipschitz", attack_params=FAST_ATTACK)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(y, y_copy)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert _hooks(model) == 0
    assert all(m.training for m in model.modules())


def test_report_for_every_attack_has_consistent_columns(data):
    x, y = data
    rep = _reporter()
    for attack, params in (
        ("apgd", FAST_ATTACK),
        ("autoattack", FAST_ATTACK),
        ("torchattacks", {"steps": 5}),
        ("pgd", FAST_ATTACK),
    ):
        rep_ = rep.report(x, y, 0.1, norm=np.inf, attack=attack, method="lipschitz", attack_params=params)
        assert len(rep_) == 6 and rep_.attack == attack
        assert np.all(rep_.attack_loss >= rep_.loss)
        assert np.all(rep_.loss <= rep_.first_order_loss)
        assert np.all(rep_.first_order_loss <= rep_.jacobian_surrogate_loss)
        assert np.all(rep_.attack_loss <= rep_.certified_loss_bound + 1e-4)
        assert rep_.summary()["certificate_violations"] == 0


def test_report_eps_zero_skips_attack_and_reduces_to_the_clean_loss(data):
    x, y = data
    rep = _reporter().report(x, y, 0.0, norm=2, method="lipschitz")
    np.testing.assert_allclose(rep.first_order_loss, rep.loss)
    np.testing.assert_allclose(rep.jacobian_surrogate_loss, rep.loss)
    np.testing.assert_allclose(rep.attack_loss, rep.loss)
    np.testing.assert_array_equal(rep.attack_success, rep.prediction != rep.label)


def test_verbose_false_prints_nothing_and_true_shows_progress(data, capsys):
    x, y = data
    rep = _reporter()
    rep.certify(x, method="lipschitz")
    assert capsys.readouterr().err == ""
    rep.certify(x, method="lipschitz", verbose=True)
    assert "certify" in capsys.readouterr().err


def test_network_is_cached_until_the_weights_change(data, monkeypatch):
    import art_jacreg.certify as certify

    x, y = data
    calls = []
    original = certify.build_network
    monkeypatch.setattr(certify, "build_network", lambda *a, **k: calls.append(1) or original(*a, **k))
    rep = _reporter()
    rep.certify(x[:2], method="lipschitz")
    rep.predict_bounds(x[:2], 0.1, method="lipschitz")
    assert len(calls) == 1
    rep.fit(x, y, nb_epochs=1, batch_size=6)  # an optimizer step changes the weights in place
    pred, radius = rep.certify(x[:2], method="lipschitz")
    assert len(calls) == 2
    fresh = _reporter(rep.model)
    np.testing.assert_array_equal(radius, fresh.certify(x[:2], method="lipschitz")[1])


# ----------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"x": np.zeros((2, 28, 28), np.float32)}, ValueError, "x"),
        ({"x": np.full((2, 1, 28, 28), np.nan, np.float32)}, ValueError, "x"),
        ({"y": np.array([0, 10, 1, 2, 3, 4])}, ValueError, "y"),
        ({"y": np.array([0, 1])}, ValueError, "y"),
        ({"eps": -0.1}, ValueError, "eps"),
        ({"norm": 1}, ValueError, "norm"),
        ({"method": "crown"}, ValueError, "method"),
        ({"attack": "fgsm"}, ValueError, "attack"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_invalid_arguments_name_the_argument(data, kwargs, exc, name):
    x, y = data
    rep = _reporter()
    args = {"x": x, "y": y, "eps": 0.1, "norm": 2, "attack": "pgd", "method": "interval", "batch_size": 8, **kwargs}
    with pytest.raises(exc, match=f"`{name}`"):
        rep.report(**args)
    if name in ("x", "norm", "method", "batch_size"):
        with pytest.raises(exc, match=f"`{name}`"):
            rep.certify(args["x"], norm=args["norm"], method=args["method"], batch_size=args["batch_size"])
    if name in ("x", "eps", "norm", "method"):
        with pytest.raises(exc, match=f"`{name}`"):
            rep.predict_bounds(args["x"], args["eps"], norm=args["norm"], method=args["method"])


# ----------------------------------------------------------------------------------- BoundReport


def _synthetic_report() -> BoundReport:
    loss = np.array([0.1, 0.5, 2.0, 0.01, 1.0])
    return BoundReport(
        label=np.array([0, 1, 2, 3, 4]),
        prediction=np.array([0, 1, 5, 3, 4]),
        loss=loss,
        first_order_loss=loss + 0.1,
        jacobian_surrogate_loss=loss + 0.3,
        certified_loss_bound=np.array([0.4, 1.5, np.inf, 0.2, 9.0]),
        certified=np.array([True, False, False, True, False]),
        certified_radius=np.array([0.2, 0.01, 0.0, 0.3, 0.0]),
        attack_loss=loss + np.array([0.05, 0.2, 0.0, 0.0, 0.5]),
        attack_success=np.array([False, True, True, False, True]),
        attack_prediction=np.array([0, 7, 5, 3, 2]),
        eps=0.1,
        norm=np.inf,
        method="interval",
        attack="apgd",
    )


def test_bound_report_summary_labels_and_repr():
    rep = _synthetic_report()
    s = rep.summary()
    assert len(rep) == 5 and s["n"] == 5
    assert s["clean_accuracy"] == pytest.approx(0.8)
    assert s["certified_accuracy"] == pytest.approx(0.4)
    assert s["attacked_accuracy"] == pytest.approx(0.4)
    assert s["first_order_exceeded"] == 2 and s["jacobian_surrogate_exceeded"] == 1
    assert s["certificate_violations"] == 0
    assert rep.column_kinds["first_order_loss"] == FIRST_ORDER == "first-order estimate"
    assert rep.column_kinds["jacobian_surrogate_loss"] == FIRST_ORDER
    assert rep.column_kinds["certified_loss_bound"] == SOUND and "sound" in SOUND
    assert rep.column_kinds["attack_loss"] == EMPIRICAL and "empirical" in EMPIRICAL
    assert set(rep.column_kinds) == set(COLUMN_KINDS)
    text = repr(rep)
    assert "n=5" in text and "certificate_violations=0" in text and "linf" in text
    md = rep.to_markdown()
    for phrase in ("first-order estimate", "sound certificate", "empirical (attack)", "certificate_violations"):
        assert phrase in md
    assert md.count("\n| ") >= 5 + 12


def test_bound_report_counts_a_violation():
    rep = _synthetic_report()
    rep.attack_prediction[0] = 9  # a certified prediction that changed: a broken certificate
    rep.attack_loss[3] = 1.0  # above its certified loss bound 0.2
    assert rep.summary()["certificate_violations"] == 2


def test_bound_report_csv_and_json_round_trip(tmp_path):
    rep = _synthetic_report()
    rep.to_csv(tmp_path / "r.csv")
    rep.to_json(tmp_path / "r.json")
    assert BoundReport.from_csv(tmp_path / "r.csv") == rep
    assert BoundReport.from_json(tmp_path / "r.json") == rep
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["column_kinds"]["first_order_loss"] == "first-order estimate"
    assert payload["metadata"]["norm"] == "inf" and payload["summary"]["certificate_violations"] == 0
    header = (tmp_path / "r.csv").read_text().splitlines()[2].split(",")
    assert header == list(COLUMN_KINDS)
    assert math.isinf(BoundReport.from_csv(tmp_path / "r.csv").certified_loss_bound[2])


def test_bound_report_rejects_ragged_columns():
    rep = _synthetic_report()
    with pytest.raises(ValueError, match="loss"):
        BoundReport(**{**rep.__dict__, "loss": np.zeros(3)})


# ----------------------------------------------------------------------------------- the model and inputs it accepts


def test_report_leaves_grads_flags_and_modes_as_found(data):
    x, y = data
    model = mnist_cnn(seed=3)
    model.train()
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 0.5)
    kept = params[0].grad
    params[-1].requires_grad_(False)
    rep = _reporter(model)
    # ART's PGD computes its gradients with loss.backward(), which fills every parameter's .grad.
    rep.report(x, y, 0.1, norm=2, attack="pgd", method="lipschitz", attack_params=FAST_ATTACK)
    rep.certify(x[:2], method="lipschitz")
    rep.predict_bounds(x[:2], 0.1, method="lipschitz")
    assert params[0].grad is kept and torch.all(kept == 0.5)
    assert all(p.grad is None for p in params[1:])
    assert [p.requires_grad for p in params] == [True] * (len(params) - 1) + [False]
    assert all(m.training for m in model.modules())


def test_inputs_outside_clip_values_are_refused(data):
    x, y = data
    rep = _reporter()
    pixels = x * 255  # 0..255 pixels given to a (0, 1) classifier
    for call in (
        lambda: rep.certify(pixels, method="lipschitz"),
        lambda: rep.predict_bounds(pixels, 0.1, method="lipschitz"),
        lambda: rep.report(pixels, y, 0.1, method="lipschitz", attack_params=FAST_ATTACK),
    ):
        with pytest.raises(ValueError, match=r"`x` has \d+ values outside the classifier's clip_values box \[0, 1\]"):
            call()


def test_double_model_and_wrong_nb_classes_get_clear_messages(data):
    x, y = data
    rep = _reporter(mnist_cnn(seed=0).double())
    for call in (
        lambda: rep.certify(x),
        lambda: rep.predict_bounds(x, 0.1),
        lambda: rep.report(x, y, 0.1, attack_params=FAST_ATTACK),
    ):
        with pytest.raises(TypeError, match=r"float64 parameters.*model.float\(\)"):
            call()
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 12))
    rep = _reporter(model, preprocessing=(0.0, 1.0))
    for call in (
        lambda: rep.certify(x),
        lambda: rep.predict_bounds(x, 0.1),
        lambda: rep.report(x, y, 0.1, attack_params=FAST_ATTACK),
    ):
        with pytest.raises(ValueError, match="nb_classes=10 but its model outputs 12 logits"):
            call()


def test_report_refuses_labels_that_are_not_one_hot(data):
    x, y = data
    rep = _reporter()
    soft = np.full((6, 10), 0.1)
    with pytest.raises(ValueError, match="`y` is 2-D, so it must be one-hot.*row 0"):
        rep.report(x, soft, 0.1, attack_params=FAST_ATTACK)
    negated = -np.eye(10)[y]
    with pytest.raises(ValueError, match="`y` is 2-D, so it must be one-hot.*row 0"):
        rep.report(x, negated, 0.1, attack_params=FAST_ATTACK)
    one_hot = rep.report(x, np.eye(10)[y], 0.0, method="lipschitz")
    np.testing.assert_array_equal(one_hot.label, y)
