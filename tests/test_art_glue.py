"""The ART adapter: differentiable forward through preprocessing, validation with clear messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
