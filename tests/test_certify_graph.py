"""build_network: tracing, supported operations, errors naming the operation, the user's model left untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_certify_helpers import MEAN, STD, FunctionalCNN, Normalized, eval_points, network, trained
from torch import nn

from art_jacreg.certify import PiecewiseLinearNetwork, UnsupportedOperationError, build_network
from art_jacreg.certify.ops import Affine, Conv2d, MaxPool2d, ReLU, Reshape
from art_jacreg.models import mnist_cnn


@pytest.mark.parametrize("name", ["mlp", "cnn", "fcnn"])
def test_network_equals_model_in_eval_mode_with_preprocessing(name):
    net = network(name)
    assert isinstance(net, PiecewiseLinearNetwork) and net.num_classes == 10
    x, _ = eval_points(16)
    with torch.no_grad():
        ref = Normalized(trained(name))(x).double()
    got = net(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_functional_cnn_ops_and_batchnorm_folded():
    ops = network("fcnn").ops
    kinds = [type(op) for op in ops]
    assert kinds[0] is Affine  # preprocessing front end
    assert kinds.count(MaxPool2d) == 2 and kinds.count(ReLU) == 2 and Reshape in kinds
    # BatchNorm after conv1 is folded into it: no second Affine
    assert kinds.count(Affine) == 1 and kinds[1] is Conv2d


class _Variants(nn.Module):
    """Every spelling of the supported operations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding="same", bias=False)
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, dilation=1, groups=2)
        self.bn1 = nn.BatchNorm1d(16)
        self.fc = nn.Linear(16, 5)
        self.seq = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x * 2.0 - 0.5)
        x = x.relu()
        x = F.avg_pool2d(self.pool(x), kernel_size=1)
        x = torch.relu(self.conv2(x / 2))
        x = F.max_pool2d(x, 1)
        x = x.view(x.size(0), -1)
        x = torch.flatten(x, 1).reshape(x.shape[0], -1).flatten(1)
        x = self.seq(self.bn1(x))
        return self.fc(1 - x)


def test_all_spellings_and_per_channel_preprocessing():
    torch.manual_seed(0)
    model = _Variants()
    model.bn1.running_mean.uniform_(-1, 1)
    model.bn1.running_var.uniform_(0.5, 2)
    model.train()  # build_network must use evaluation semantics regardless of the mode
    mean, std = np.array([0.4, 0.5, 0.6], np.float32), np.array([0.2, 0.25, 0.3], np.float32)
    net = build_network(model, (3, 12, 12), preprocessing=(mean, std))
    assert model.training  # mode restored (the copy was put in eval, not the model)
    x = torch.rand(5, 3, 12, 12)
    model.eval()
    with torch.no_grad():
        ref = model((x - torch.tensor(mean).reshape(3, 1, 1)) / torch.tensor(std).reshape(3, 1, 1)).double()
    torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-5)


def test_user_model_untouched_state_dict_hooks_and_mode():
    model = mnist_cnn(seed=3)
    model.train()
    calls = []
    handle = model[0].register_forward_hook(lambda *args: calls.append(1))
    top = model.register_forward_hook(lambda *args: calls.append(2))
    before = copy.deepcopy(model.state_dict())
    hooks_before = (dict(model._forward_hooks), dict(model[0]._forward_hooks))
    build_network(model, (1, 28, 28), preprocessing=(MEAN, STD))
    assert model.training
    assert (dict(model._forward_hooks), dict(model[0]._forward_hooks)) == hooks_before
    assert calls == []  # tracing ran on a copy without the hooks
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    handle.remove()
    top.remove()


class _Sigmoid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(x))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(x + torch.relu(self.fc1(x)))


@pytest.mark.parametrize(
    ("model", "fragments"),
    [
        (_Sigmoid(), ["unsupported operation", "torch.sigmoid", "'sigmoid'"]),
        (nn.Sequential(nn.Linear(4, 3), nn.Tanh()), ["unsupported operation", "torch.nn.Tanh", "module '1'"]),
        (_Residual(), ["unsupported operation", "operator.add", "'add'", "residual"]),
        (nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1)), ["torch.nn.Softmax"]),
    ],
)
def test_unsupported_operations_named(model, fragments):
    with pytest.raises(UnsupportedOperationError) as info:
        build_network(model, (4,))
    assert isinstance(info.value, TypeError)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_random_dropout_and_non_flat_output_rejected():
    class RandomDrop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.dropout(x, 0.5)  # training=True even in eval mode

    with pytest.raises(UnsupportedOperationError, match="dropout"):
        build_network(nn.Sequential(nn.Linear(4, 3), RandomDrop()), (4,))
    with pytest.raises(ValueError, match="flat logits"):
        build_network(nn.Sequential(nn.Conv2d(1, 2, 3)), (1, 5, 5))


def test_bad_arguments():
    model = FunctionalCNN()
    with pytest.raises(TypeError, match="model"):
        build_network("not a model", (1, 28, 28))
    with pytest.raises(ValueError, match="input_shape"):
        build_network(model, (0, 28))
    with pytest.raises(ValueError, match="preprocessing"):
        build_network(model, (1, 28, 28), preprocessing=(0.1,))
    with pytest.raises(ValueError, match="std"):
        build_network(model, (1, 28, 28), preprocessing=(0.1, 0.0))
    with pytest.raises(ValueError, match="broadcast"):
        build_network(model, (1, 28, 28), preprocessing=(np.zeros(5), 1.0))


class _Concat(nn.Module):
    """Two branches joined by torch.cat: the error must name the join, not a branch's Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))


def test_concatenation_is_named_as_the_unsupported_operation():
    with pytest.raises(UnsupportedOperationError) as info:
        build_network(_Concat(), (4,))
    message = str(info.value)
    assert "torch.cat" in message and "'cat'" in message and "combines 2 tensors" in message
    assert "Linear" not in message
