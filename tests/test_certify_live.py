"""Live operations: the certifier's operation classes on a model's own parameters, as certified training uses them.

A live network computes what the frozen (float64) network computes, follows the model through optimizer steps
without tracing again, leaves the model untouched, passes gradients to every parameter through every bound family,
and its operations' training norms agree with the certifier's sound norms (exactly for l-inf, in the limit for l2).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import fx, nn

from art_jacreg.certify import UnsupportedOperationError, build_network, certified_radius
from art_jacreg.certify.network import LiveNetwork
from art_jacreg.certify.objectives import CertifiedMargins
from art_jacreg.certify.ops import Conv2d, Linear
from art_jacreg.certify.trace import trace_plan

PRE = (0.4, 0.3)


def pool_cnn(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 5),
    )  # fmt: skip


class Scaled(nn.Module):
    """A chain whose scalar arithmetic is folded into the Linear before it (a differentiable fold when live)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.fc1, self.fc2 = nn.Conv2d(1, 3, 3, stride=2), nn.Linear(27, 10), nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(h) * 2.0 - 0.5))


def data(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand((n, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    return x, torch.arange(n) % 5


SETTINGS = [  # norm, bound, depth, crown
    (2.0, "global", 1, False),
    (2.0, "local", 1, False),
    (2.0, "local", None, False),
    (math.inf, "global", 1, False),
    (math.inf, "local", 1, False),
    (math.inf, "local", 1, True),
]


@pytest.mark.parametrize("make", [pool_cnn, lambda seed: Scaled()], ids=["pool_cnn", "scaled"])
@pytest.mark.parametrize("norm,bound,depth,crown", SETTINGS)
def test_gradients_reach_every_parameter(make, norm, bound, depth, crown):
    model = make(1)
    cm = CertifiedMargins(model, (1, 8, 8), PRE, (0.0, 1.0))
    x, y = data()
    eps = 0.3 if norm == 2 else 0.03
    _, low = cm.margin_lower(x, y, eps, norm, bound, depth=depth, crown=crown, logits=None)
    params = list(model.parameters())
    grads = torch.autograd.grad(low.sum(), params)
    for (name, _), g in zip(model.named_parameters(), grads):
        assert torch.isfinite(g).all() and g.abs().sum() > 0, f"no gradient reaches {name}"


def test_live_network_matches_the_frozen_one_and_follows_optimizer_steps_without_tracing(monkeypatch):
    model = pool_cnn(2).double()
    plan = trace_plan(model, (1, 8, 8), PRE)
    x, y = data()
    live = plan.build_live(model)
    assert isinstance(live, LiveNetwork)
    frozen = build_network(model, (1, 8, 8), PRE)
    assert torch.allclose(live(x.double()), frozen(x.double()), rtol=1e-12, atol=1e-12)
    cm = CertifiedMargins(model, (1, 8, 8), PRE, (0.0, 1.0))

    def no_tracing(*args, **kwargs):
        raise AssertionError("traced again")

    monkeypatch.setattr(fx, "symbolic_trace", no_tracing)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    _, low = cm.margin_lower(x.double(), y, 0.03, math.inf, "local", crown=True)
    low[:, 1:].sum().backward()
    opt.step()
    with torch.no_grad():
        after = cm.margin_lower(x.double(), y, 0.03, math.inf, "local", crown=True)[1]
        moved = plan.build_live(model)(x.double())
    assert not torch.allclose(moved, frozen(x.double()))  # the frozen copy keeps the old weights
    with pytest.raises(TypeError, match="PiecewiseLinearNetwork"):  # a live network is never certified
        certified_radius(live, x.double(), y, 2.0, (0.0, 1.0))
    assert torch.allclose(moved, model((x.double() - PRE[0]) / PRE[1]), rtol=1e-12, atol=1e-12)
    monkeypatch.undo()
    fresh = CertifiedMargins(model, (1, 8, 8), PRE, (0.0, 1.0))
    with torch.no_grad():
        expected = fresh.margin_lower(x.double(), y, 0.03, math.inf, "local", crown=True)[1]
    assert torch.allclose(after, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(after, low.detach())


def test_live_network_keeps_the_models_dtype_and_leaves_it_untouched():
    model = pool_cnn(3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cm = CertifiedMargins(model, (1, 8, 8), PRE, (0.0, 1.0))
    net = cm.network()
    weights = [op.weight for op in net.ops if isinstance(op, (Linear, Conv2d)) and op.weight.requires_grad]
    assert len(weights) == 4 and all(any(w is p for p in model.parameters()) for w in weights)
    x, y = data()
    _, low = cm.margin_lower(x, y, 0.3, 2.0, "local")
    assert low.dtype == torch.float32
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_training_norms_agree_with_the_certifiers_sound_norms():
    model = pool_cnn(4).double()
    cm = CertifiedMargins(model, (1, 8, 8), PRE, None)
    net = cm.network()
    frozen = build_network(model, (1, 8, 8), PRE)
    inf = cm.layer_norms(math.inf, net=net)
    two = cm.layer_norms(2.0, n_iter=1000, net=net)
    assert len(net.ops) == len(frozen.ops) == 11
    for t_inf, t_two, sound in zip(inf, two, frozen.ops):
        t_inf, t_two = float(torch.as_tensor(t_inf).detach()), float(torch.as_tensor(t_two).detach())
        assert t_inf == pytest.approx(sound.operator_norm(math.inf), rel=1e-8)
        assert t_two <= sound.operator_norm(2.0) * (1 + 1e-9)  # power iteration approaches from below
        assert t_two == pytest.approx(sound.operator_norm(2.0), rel=1e-4)


def test_batchnorm_is_refused_for_training_with_a_clear_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(72, 5))
    build_network(model, (1, 8, 8))  # fine for certificates (running statistics)
    with pytest.raises(UnsupportedOperationError, match="BatchNorm"):
        CertifiedMargins(model, (1, 8, 8))
