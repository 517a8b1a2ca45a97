"""l-inf / ``"linear"`` certificates keep the interval bound with only the final affine block relaxed.

Relaxing every ReLU down to the input (CROWN) is usually tighter, but not always: on an unstable ReLU whose upper
bound exceeds ``-lower`` the adaptive lower line is the identity, and a positive output weight then inherits the
pre-activation's lower bound, while the interval image of the ReLU stays ``>= 0``. Networks trained with interval
bounds have many such units. The hand-built network below is the smallest case: its margin is
``relu(x1 + 0.1) + relu(x2 + 0.1) + 0.05 >= 0.05`` on the whole box, which the interval bound proves and CROWN alone
does not (its lower bound is ``-1.75``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from art_jacreg.certify import build_network, certify_at
from art_jacreg.certify.certificates import certify_slack, margin_lower, prepare_inputs
from art_jacreg.certify.decide import margins_certified
from art_jacreg.certify.intervals import backward_lower, interval_bounds


def _margin_network() -> nn.Sequential:
    first, last = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        first.weight.copy_(torch.eye(2))
        first.bias.fill_(0.1)
        last.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        last.bias.copy_(torch.tensor([0.05, 0.0]))
    return nn.Sequential(first, nn.ReLU(), last)


def test_interval_bound_of_the_final_block_certifies_what_crown_alone_cannot():
    net = build_network(_margin_network(), (2,))
    x, label = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0])
    _, s, method, logits = prepare_inputs(net, x, 1.0, math.inf, None, "interval")
    rows = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
    bounds = interval_bounds(net, s)
    crown_only = backward_lower(net, s, bounds, rows, len(net.ops), 0)
    assert float(crown_only) < -1.7  # the relaxation to the input alone refuses
    low = margin_lower(net, s, label, method, logits)
    assert 0.05 - 1e-9 <= float(low) <= 0.05 + 1e-9  # the exact minimum, reached at the corner (-1, -1)
    slack = certify_slack(logits)
    assert bool(margins_certified(net, s, label, method, logits, slack))  # the early-stopping decision agrees
    assert bool(certify_at(net, x, label, 1.0, math.inf))
    assert bool(certify_at(net, x, label, 1.0, math.inf, method="linear"))


def test_the_certificate_holds_under_sampling_of_the_whole_box():
    model = _margin_network()
    gen = torch.Generator().manual_seed(0)
    corners = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    points = torch.cat([torch.rand(20000, 2, generator=gen) * 2 - 1, corners])
    with torch.no_grad():
        out = model(points)
    margins = out[:, 0] - out[:, 1]
    assert float(margins.min()) >= 0.05 - 1e-6  # the proved lower bound is never beaten
    assert bool((out.argmax(1) == 0).all())
