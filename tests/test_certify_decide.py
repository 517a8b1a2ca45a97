"""``decide.margins_certified``: the early-stopping certification decision equals thresholding ``margin_lower``.

Radii of every point are spread over a range around its certified radius, so that within one batch some samples are
settled by the global Lipschitz bound, some by the relaxation, some by the split interval Jacobian or a
centre-and-ball candidate, and some are refused; each decision must be the one of the full computation.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_certify_helpers import CLIP, eval_points, network

from art_jacreg.certify import certified_radius
from art_jacreg.certify.certificates import certify_slack, margin_lower, prepare_inputs
from art_jacreg.certify.decide import margins_certified

CASES = [
    ("cnn", 2.0, "interval"),
    ("cnn", math.inf, "interval"),
    ("fcnn", 2.0, "interval"),
    ("fcnn", math.inf, "interval"),
    ("cnn", 2.0, "linear"),
    ("fcnn", math.inf, "linear"),
]


@pytest.mark.parametrize(("name", "norm", "method"), CASES)
def test_early_stopping_decision_equals_the_full_one(name, norm, method):
    net = network(name)
    x, _ = eval_points(8, offset=170)
    pred = net(x).argmax(1)
    base = certified_radius(net, x, pred, norm, CLIP, "interval", n_bisect=3).clamp(min=1e-3)
    decisions = []
    for scale in (0.3, 0.9, 1.0, 1.2, 2.0):
        spread = torch.linspace(0.6, 1.4, len(x), dtype=torch.float64)
        _, s, _, logits = prepare_inputs(net, x, base * scale * spread, norm, CLIP, method)
        slack = certify_slack(logits)
        full = (margin_lower(net, s, pred, method, logits, slack[:, None]) > slack[:, None]).all(dim=1)
        early = margins_certified(net, s, pred, method, logits, slack)
        assert torch.equal(early, full), (scale, early, full)
        decisions.append(full)
    both = torch.cat(decisions)
    assert both.any() and (~both).any()  # both outcomes were exercised
