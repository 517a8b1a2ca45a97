from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from art_jacreg import generalization as gen
from art_jacreg.data import load_mnist
from art_jacreg.models import make_classifier, mnist_cnn
from art_jacreg.norms import jacobian


@pytest.fixture(scope="module")
def data():
    (x, y), (xt, yt), _, _ = load_mnist()
    return x[:1000], y[:1000], xt[:200], yt[:200]


@pytest.fixture(scope="module")
def trained(data):
    x, y, _, _ = data
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    clf = make_classifier(mnist_cnn(seed=0))
    clf.fit(x, y, nb_epochs=3, batch_size=32)
    torch.set_num_threads(previous)
    return clf


def _explicit(layer: torch.nn.Module, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Operator matrix (n_out, n_in) of a Conv2d/Linear layer without bias, built from the torch module itself."""
    n_in = math.prod(in_shape)
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *in_shape)
    weight = layer.weight.detach().double()
    if isinstance(layer, torch.nn.Conv2d):
        out = torch.nn.functional.conv2d(basis, weight, None, layer.stride, layer.padding)
    else:
        out = basis @ weight.T
    return out.reshape(n_in, -1).T


def _power_iteration(a: torch.Tensor, n_iter: int = 100) -> float:
    gen_ = torch.Generator().manual_seed(0)
    v = torch.randn(a.shape[1], dtype=torch.float64, generator=gen_)
    for _ in range(n_iter):
        v = a.T @ (a @ v)
        v = v / v.norm()
    return float((a @ v).norm())


def test_layer_norms_match_explicit_operators_and_bound_power_iteration(trained):
    layers = gen.layer_norms(trained)
    model = trained.model
    modules = [m for m in model if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    shapes = [(1, 28, 28), (16, 14, 14), (1568,), (100,)]
    assert [layer.kind for layer in layers] == ["Conv2d", "Conv2d", "Linear", "Linear"]
    for layer, module, shape in zip(layers, modules, shapes):
        a = _explicit(module, shape)
        assert layer.shape == tuple(a.shape)
        estimate = _power_iteration(a)
        # Sound upper bound: never below power iteration (a lower estimate of sigma_max) ...
        assert layer.spectral >= estimate
        # ... and not loose (certify uses exact SVD or the circular-convolution bound, within a few percent).
        assert layer.spectral <= 1.1 * estimate
        assert layer.frobenius == pytest.approx(float(a.norm()), rel=1e-9)
        assert layer.l21_transpose == pytest.approx(float(a.norm(dim=1).sum()), rel=1e-9)


def test_preprocessing_enters_as_an_affine_layer(data):
    clf = make_classifier(mnist_cnn(seed=1), preprocessing=(0.1307, 0.3081))
    layers = gen.layer_norms(clf)
    assert layers[0].kind == "Affine"
    assert layers[0].spectral == pytest.approx(1 / 0.3081, rel=1e-6)
    assert layers[0].frobenius == pytest.approx(math.sqrt(784) / 0.3081, rel=1e-6)


def test_products_and_spectral_complexity_follow_the_formulas(trained, data):
    x, y, xt, yt = data
    report = gen.generalization_report(trained, x[:100], y[:100], xt[:100], yt[:100])
    spec = np.array([layer.spectral for layer in report.layers])
    fro = np.array([layer.frobenius for layer in report.layers])
    l21 = np.array([layer.l21_transpose for layer in report.layers])
    assert report.spectral_product == pytest.approx(float(np.prod(spec)), rel=1e-12)
    assert report.frobenius_product == pytest.approx(float(np.prod(fro)), rel=1e-12)
    # R_A in its second form: (sum_i b_i^{2/3} prod_{j != i} s_j^{2/3})^{3/2}.
    alt = sum(l21[i] ** (2 / 3) * np.prod(np.delete(spec, i)) ** (2 / 3) for i in range(len(spec))) ** 1.5
    assert report.spectral_complexity == pytest.approx(alt, rel=1e-9)
    term = report.spectral_complexity * report.data_norm / (report.margin * report.n_train)
    assert report.margin_bound == pytest.approx(term, rel=1e-12)
    assert report.data_norm == pytest.approx(float(np.linalg.norm(x[:100])), rel=1e-6)


def test_real_model_bound_is_flagged_vacuous_in_words(trained, data):
    x, y, xt, yt = data
    report = gen.generalization_report(trained, x[:100], y[:100], xt[:100], yt[:100])
    assert report.margin > 0
    assert 0 <= report.margin_violations <= 0.5
    assert report.margin_bound > 1
    assert report.vacuous
    text = report.to_markdown()
    assert "VACUOUS" in text and "exceeds 1," in text
    assert report.to_dict()["vacuous"] is True


def test_small_bound_is_not_flagged_and_nonpositive_margin_is():
    layers = [gen.LayerNorms(0, "Linear", (2, 2), 1.0, 1.0, 1.0)]
    gap = gen.Gap(0.1, 0.2, 1.0, 0.9)
    jac = {"frobenius": 1.0, "l11": 1.0, "n": 4}
    ok = gen.GeneralizationReport.build(layers, np.full(100, 10.0), 10.0, jac, jac, gap)
    assert ok.margin_bound == pytest.approx(1.0 * 10.0 / (10.0 * 100))
    assert not ok.vacuous and "VACUOUS" not in ok.to_markdown()
    # gamma = 10% quantile of the positive margins; the violations (margins below gamma) enter the bound.
    mixed = gen.GeneralizationReport.build(layers, np.linspace(-1, 1, 101), 10.0, jac, jac, gap)
    assert mixed.margin == pytest.approx(0.118)  # linear interpolation between 0.10 and 0.12
    assert mixed.margin_violations == pytest.approx(56 / 101)
    assert mixed.vacuous  # 0.55 + 1 * 10 / (0.11 * 101) > 1
    bad = gen.GeneralizationReport.build(layers, -np.ones(10), 10.0, jac, jac, gap)
    assert math.isnan(bad.margin_bound) and bad.vacuous
    assert "cannot be evaluated" in bad.to_markdown()
    with pytest.raises(ValueError, match="margin_quantile"):
        gen.GeneralizationReport.build(layers, np.ones(3), 1.0, jac, jac, gap, margin_quantile=1.5)


def test_mean_jacobian_norms_are_exact(trained, data):
    _, _, xt, _ = data
    got = gen.mean_jacobian_norms(trained, xt[:7], batch_size=3)
    func = lambda t: trained.model(t)  # noqa: E731 - identity preprocessing
    jac = jacobian(func, torch.from_numpy(xt[:7])).detach().double()
    assert got["frobenius"] == pytest.approx(float(jac.flatten(1).norm(dim=1).mean()), rel=1e-4)
    assert got["l11"] == pytest.approx(float(jac.abs().flatten(1).sum(dim=1).mean()), rel=1e-4)


def test_gaps_standard_and_robust_are_consistent(trained, data):
    x, y, xt, yt = data
    clean = gen.empirical_gap(trained, x[:60], y[:60], xt[:60], yt[:60])
    pred_test = trained.predict(xt[:60]).argmax(1)
    assert clean.accuracy_test == pytest.approx(float((pred_test == yt[:60].argmax(1)).mean()))
    assert clean.accuracy_gap == pytest.approx(clean.accuracy_train - clean.accuracy_test)
    assert clean.loss_gap == pytest.approx(clean.loss_test - clean.loss_train)
    robust = gen.empirical_gap(
        trained, x[:60], y[:60], xt[:60], yt[:60], eps=0.15, norm="inf", attack_params={"max_iter": 5}
    )
    assert robust.norm == "inf" and robust.eps == 0.15
    assert robust.accuracy_train <= clean.accuracy_train and robust.accuracy_test <= clean.accuracy_test
    assert robust.loss_train >= clean.loss_train and robust.loss_test >= clean.loss_test
    assert robust.accuracy_test < clean.accuracy_test  # a 0.15 l-inf attack hurts a plainly trained CNN


def test_report_with_robust_gap_serialises(trained, data):
    x, y, xt, yt = data
    report = gen.generalization_report(
        trained, x[:40], y[:40], xt[:40], yt[:40], eps={"l2": 1.0}, attack_params={"max_iter": 3}
    )
    assert set(report.robust_gaps) == {"2"}
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["robust_gaps"]["2"]["eps"] == 1.0
    assert len(as_json["layers"]) == 4
    text = report.to_markdown()
    assert "robust l2 eps 1" in text and "Bartlett, Foster and Telgarsky" in text
    assert report.jacobian_train["n"] == 40


def test_layer_norms_share_the_reporters_network_and_follow_in_place_edits(data, monkeypatch):
    import art_jacreg.certify as certify
    from art_jacreg import JacobianBoundReporter

    x, y, _, _ = data
    calls = []
    original = certify.build_network
    monkeypatch.setattr(certify, "build_network", lambda *a, **k: calls.append(1) or original(*a, **k))
    clf = make_classifier(mnist_cnn(seed=5))
    before = gen.layer_norms(clf)
    JacobianBoundReporter.from_classifier(clf, verbose=False).certify(x[:2], method="lipschitz")
    assert len(calls) == 1  # one network, cached on the weights' values, for both
    clf.model[-1].weight.data.mul_(2.0)  # does not bump torch's version counter
    after = gen.layer_norms(clf)
    assert len(calls) == 2
    assert after[-1].frobenius == pytest.approx(2 * before[-1].frobenius, rel=1e-9)
    assert after[-1].spectral == pytest.approx(2 * before[-1].spectral, rel=1e-6)
    assert [a.frobenius for a in after[:-1]] == [b.frobenius for b in before[:-1]]


def test_empirical_gap_leaves_the_model_as_found(trained, data):
    x, y, xt, yt = data
    model = trained.model
    model.train()
    params = list(model.parameters())
    params[0].grad = None
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    gen.empirical_gap(
        trained, x[:8], y[:8], xt[:8], yt[:8], eps=0.1, norm=2, attack="pgd", attack_params={"max_iter": 2}
    )
    assert params[0].grad is None
    for p, g in zip(params, grads):
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
    assert all(m.training for m in model.modules())
    model.eval()


def test_bound_math_module_imports_neither_art_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from art_jacreg.generalization.bounds import LayerNorms, spectral_complexity\n"
        "layers = [LayerNorms(0, 'Linear', (2, 2), 2.0, 2.0, 2.0), LayerNorms(1, 'Linear', (1, 2), 4.0, 4.0, 4.0)]\n"
        "print(spectral_complexity(layers))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'art', 'torch'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    value, loaded = done.stdout.split("\n")[:2]
    # R_A = (2 * 4) * (1^(2/3) + 1^(2/3))^(3/2) = 8 * 2^(3/2)
    assert float(value) == pytest.approx(8 * 2**1.5, rel=1e-12)
    assert loaded == "[]"


def test_empirical_margin_is_a_quantile_of_the_positive_margins():
    from art_jacreg.generalization.bounds import empirical_margin

    gamma, loss = empirical_margin(np.array([-1.0, 0.5, 1.0, 2.0, 3.0]), 0.5)
    assert gamma == pytest.approx(1.5)  # median of [0.5, 1, 2, 3]
    assert loss == pytest.approx(3 / 5)  # -1, 0.5 and 1 lie below it
    gamma, loss = empirical_margin(np.array([-1.0, 0.0]), 0.1)
    assert math.isnan(gamma) and loss == 1.0
    with pytest.raises(ValueError, match="margin_quantile"):
        empirical_margin(np.array([1.0]), 1.0)
