"""The ART adapter: differentiable forward through preprocessing, validation with clear messages."""

from __future__ import annotations

import copy
import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from art_jacreg import _art
from art_jacreg.models import make_classifier, mnist_cnn


@pytest.fixture(scope="module")
def classifier():
    return make_classifier(mnist_cnn(seed=0), preprocessing=(0.1307, 0.3081))


def test_logits_function_is_differentiable_through_preprocessing(classifier) -> None:
    func = _art.logits_function(classifier)
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    logits = func(x)
    model = classifier.model.eval()
    expected = model((x - 0.1307) / 0.3081)
    torch.testing.assert_close(logits, expected)
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    art_grad = classifier.class_gradient(x.detach().numpy(), label=0)[:, 0]
    np.testing.assert_allclose(grad.numpy(), art_grad, rtol=1e-4, atol=1e-6)


def test_preprocessing_affine(classifier) -> None:
    mean, std = _art.preprocessing_affine(classifier)
    assert np.allclose(mean, 0.1307) and np.allclose(std, 0.3081)
    assert _art.preprocessing_affine(make_classifier(mnist_cnn())) is None


def test_check_pytorch_classifier_rejects_other_estimators() -> None:
    with pytest.raises(TypeError, match="`classifier` must be an art.estimators.classification.PyTorchClassifier"):
        _art.check_pytorch_classifier(object())


def test_validate_x(classifier) -> None:
    x = np.random.default_rng(0).random((2, 1, 28, 28))
    out = _art.validate_x(x, classifier)
    assert out.dtype == np.float32 and out is not x
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, 1, 28, 28\)"):
        _art.validate_x(np.zeros((2, 28, 28)), classifier)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _art.validate_x(bad, classifier)
    with pytest.raises(ValueError, match="empty"):
        _art.validate_x(np.zeros((0, 1, 28, 28)), classifier)


def test_validate_labels() -> None:
    assert np.array_equal(_art.validate_labels([1, 2], 2, 10), [1, 2])
    one_hot = np.eye(10)[[3, 4]]
    assert np.array_equal(_art.validate_labels(one_hot, 2, 10), [3, 4])
    with pytest.raises(ValueError, match=r"out of range: expected values in \[0, 9\]"):
        _art.validate_labels([0, 10], 2, 10)
    with pytest.raises(ValueError, match="2 labels but there are 3 samples"):
        _art.validate_labels([0, 1], 3, 10)
    with pytest.raises(ValueError, match="one-hot with 10 columns"):
        _art.validate_labels(np.zeros((2, 5)), 2, 10)
    with pytest.raises(ValueError, match="integer class indices"):
        _art.validate_labels([0.5, 1.0], 2, 10)


def test_validate_eps_and_norm() -> None:
    assert _art.validate_eps(0) == 0.0
    with pytest.raises(ValueError, match="`eps` must be a finite number >= 0"):
        _art.validate_eps(-0.1)
    with pytest.raises(ValueError, match="> 0"):
        _art.validate_eps(0.0, allow_zero=False)
    with pytest.raises(TypeError, match="`eps`"):
        _art.validate_eps("0.1")
    assert (
        _art.validate_norm("l2") == 2.0 and _art.validate_norm(np.inf) == np.inf and _art.validate_norm("inf") == np.inf
    )
    with pytest.raises(ValueError, match="`norm` must be 2 or np.inf"):
        _art.validate_norm(1)


def test_model_mode_restores_every_submodule() -> None:
    model = mnist_cnn()
    model.train()
    model[0].eval()
    with _art.model_mode(model, training=False):
        assert not any(m.training for m in model.modules())
    assert model.training and not model[0].training and model[1].training


# ----------------------------------------------------------------------------------- network_of


def _net_tensors(net) -> list[torch.Tensor]:
    return [v for op in net.ops for v in vars(op).values() if isinstance(v, torch.Tensor)]


def _small_classifier(preprocessing=(0.0, 1.0)):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 13 * 13, 10))
    return make_classifier(model, preprocessing=preprocessing)


def test_network_of_is_reused_while_the_values_are_equal() -> None:
    clf = _small_classifier()
    net = _art.network_of(clf)
    assert _art.network_of(clf) is net
    # A copy with equal values (new tensors, new addresses) is served from its own entry, equal by value.
    other = make_classifier(copy.deepcopy(clf.model))
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(_art.network_of(other)(x), net(x), rtol=0, atol=0)
    # Re-assigning identical values is not a change.
    clf.model.load_state_dict(copy.deepcopy(clf.model.state_dict()))
    assert _art.network_of(clf) is net


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m[3].weight.data.mul_(1.5),
        lambda m: m[0].bias.detach().numpy().__setitem__(0, 7.0),
        lambda m: m.load_state_dict({**m.state_dict(), "3.bias": torch.ones(10)}),
        lambda m: setattr(m, "3", nn.Linear(2 * 13 * 13, 10)),
        lambda m: setattr(m[0], "padding", (1, 1)) or setattr(m, "3", nn.Linear(2 * 14 * 14, 10)),
    ],
    ids=["data", "numpy_view", "load_state_dict", "swapped_module", "changed_settings"],
)
def test_network_of_is_rebuilt_on_any_change(edit) -> None:
    clf = _small_classifier()
    net = _art.network_of(clf)
    before = [t.clone() for t in _net_tensors(net)]
    x = torch.rand(3, 1, 28, 28)
    torch.manual_seed(1)
    edit(clf.model)
    rebuilt = _art.network_of(clf)
    assert rebuilt is not net
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), clf.model.eval()(x).double(), rtol=1e-5, atol=1e-5)
    # build_network copies the weights (float64): the old network and the caches on it never saw the edit.
    assert all(torch.equal(a, b) for a, b in zip(before, _net_tensors(net)))
    assert all(t.dtype == torch.float64 for t in _net_tensors(rebuilt))


def test_network_of_keys_on_preprocessing_and_restores_modes() -> None:
    clf = _small_classifier()
    clf.model.train()
    plain = _art.network_of(clf)
    assert all(m.training for m in clf.model.modules())
    shifted = make_classifier(clf.model, preprocessing=(0.5, 0.25))
    net = _art.network_of(shifted)
    assert net is not plain and _art.network_of(clf) is plain
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(net(x), plain((x - 0.5) / 0.25))


def test_network_of_forgets_collected_models() -> None:
    clf = _small_classifier()
    _art.network_of(clf)
    ref = weakref.ref(clf.model)
    del clf
    gc.collect()
    assert ref() is None


# ----------------------------------------------------------------------------------- model checks


def test_preserved_model_state_restores_modes_grads_and_flags() -> None:
    model = mnist_cnn(seed=0)
    model.train()
    model[0].eval()
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 0.25)
    kept = params[0].grad
    params[1].requires_grad_(False)
    with _art.preserved_model_state(model):
        model.eval()
        for p in params:
            p.requires_grad_(True)
        model(torch.rand(2, 1, 28, 28)).sum().backward()
        assert all(p.grad is not None for p in params)
    assert model.training and not model[0].training and model[1].training
    assert params[0].grad is kept and torch.all(kept == 0.25)
    assert all(p.grad is None for p in params[1:])
    assert [p.requires_grad for p in params] == [True, False] + [True] * (len(params) - 2)


def test_float32_and_logit_count_checks() -> None:
    clf = make_classifier(mnist_cnn(seed=0))
    _art.check_float32_model(clf)
    _art.check_logit_count(clf, 10)
    with pytest.raises(ValueError, match="nb_classes=10 but its model outputs 12 logits"):
        _art.check_logit_count(clf, 12)
    clf.model.double()
    with pytest.raises(TypeError, match=r"float64 parameters.*model.float\(\)"):
        _art.check_float32_model(clf)


def test_network_of_sees_plain_settings_read_by_forward_but_not_modes() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(784, 10)
            self.scale = 1.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scale * self.fc(x.flatten(1))

    clf = make_classifier(Scaled())
    net = _art.network_of(clf)
    clf.model.train()
    assert _art.network_of(clf) is net  # the train/eval flag is not part of the network
    clf.model.scale = 3.0
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(_art.network_of(clf)(x), 3.0 * net(x))
