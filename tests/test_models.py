import numpy as np
import pytest
import torch

from art_jacreg.models import make_classifier, mnist_cnn, mnist_maxpool_cnn, mnist_mlp


@pytest.mark.parametrize("factory", [mnist_cnn, mnist_maxpool_cnn, mnist_mlp])
def test_models_map_mnist_to_ten_logits_and_are_seeded(factory):
    x = torch.rand(3, 1, 28, 28)
    a, b = factory(seed=1), factory(seed=1)
    assert a(x).shape == (3, 10)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = factory(seed=2)
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_maxpool_cnn_layout():
    model = mnist_maxpool_cnn()
    kinds = [type(m).__name__ for m in model]
    assert kinds.count("MaxPool2d") == 2 and kinds.count("Conv2d") == 2 and kinds.count("Linear") == 2
    assert model[7].in_features == 512


def test_maxpool_cnn_is_certifiable():
    from art_jacreg import JacobianBoundReporter

    clf = make_classifier(mnist_maxpool_cnn(), device_type="cpu")
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    pred, radius = JacobianBoundReporter.from_classifier(clf, verbose=False).certify(x, norm=2, method="lipschitz")
    assert pred.shape == (2,) and np.all(radius >= 0)


def test_make_classifier_device_follows_art_default():
    clf = make_classifier(mnist_mlp())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert clf.device.type == expected
    assert make_classifier(mnist_mlp(), device_type="cpu").device.type == "cpu"


def test_make_classifier_rejects_unknown_device_type():
    with pytest.raises(ValueError, match="device_type"):
        make_classifier(mnist_mlp(), device_type="tpu")
