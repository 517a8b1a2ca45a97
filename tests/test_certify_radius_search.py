"""The radius search of ``certify.radius``: it returns only radii whose certificate held, and closes the bracket to
``RADIUS_RTOL`` on decreasing margin-excess curves, also when certified points report only a lower bound of their
excess (as the early-stopping decision does)."""

from __future__ import annotations

import math

import torch

from art_jacreg.certify.radius import RADIUS_RTOL, _search

ROOTS = torch.tensor([0.05, 0.3, 1.0, 2.5, 7.0], dtype=torch.float64)


def _curve(kind: str):
    """An excess function with its root at ``ROOTS`` per sample, and the log of every evaluation."""
    log: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def excess(idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        t = eps / ROOTS[idx]
        if kind == "linear":
            value = 1.0 - t
        elif kind == "concave":  # bounds loosen faster as the ball grows
            value = 1.0 - 0.2 * t - 0.8 * t**2
        else:  # "pessimistic": certified points report a tiny fraction of their excess (early stopping)
            value = 1.0 - 0.2 * t - 0.8 * t**2
            value = torch.where(value > 0, value * 1e-3, value)
        log.append((idx.clone(), eps.clone(), value > 0))
        return value

    return excess, log


def _run(kind: str, steps: int = 20) -> tuple[torch.Tensor, list]:
    excess, log = _curve(kind)
    start = ROOTS / 3  # a certified starting radius (the Lipschitz one in the real search)
    excess0 = torch.ones_like(ROOTS)
    return _search(excess, start.clone(), torch.full_like(ROOTS, math.inf), excess0, steps), log


def test_search_closes_the_bracket_on_decreasing_curves():
    for kind in ("linear", "concave", "pessimistic"):
        radius, _ = _run(kind)
        assert bool((radius < ROOTS).all()), kind  # never past the limit
        assert bool((radius >= ROOTS / (1 + RADIUS_RTOL)).all()), (kind, radius / ROOTS)


def test_search_returns_only_radii_whose_certificate_held():
    for kind in ("linear", "concave", "pessimistic"):
        radius, log = _run(kind, steps=3)  # a small budget leaves the bracket open: still only certified radii
        for i in range(len(ROOTS)):
            held = [float(e[k]) for idx, e, ok in log for k in range(len(idx)) if int(idx[k]) == i and bool(ok[k])]
            assert float(radius[i]) in held or math.isclose(float(radius[i]), float(ROOTS[i] / 3)), (kind, i)


def test_search_needs_fewer_evaluations_than_bisection_on_a_smooth_curve():
    _, log = _run("concave")
    rounds = len(log)
    # plain bisection: 2 bracketing rounds, then ceil(log2(ln 4 / ln(1 + RADIUS_RTOL))) = 9 rounds
    assert rounds < 2 + 9, rounds


def test_search_respects_the_cap():
    excess, _ = _curve("linear")
    cap = ROOTS / 2
    radius = _search(excess, (ROOTS / 3).clone(), cap.clone(), torch.ones_like(ROOTS), 20)
    assert torch.equal(radius, cap)


def test_plain_bisection_mode_closes_the_bracket_and_stays_certified():
    excess, log = _curve("concave")
    radius = _search(excess, (ROOTS / 3).clone(), torch.full_like(ROOTS, math.inf), torch.ones_like(ROOTS), 12,
                     falsi=False)  # fmt: skip
    assert bool((radius < ROOTS).all()) and bool((radius >= ROOTS / (1 + RADIUS_RTOL)).all())
    assert [round(float(e[0] / ROOTS[int(i[0])]), 4) for i, e, _ in log[:2]] == [0.3667, 1.4667]  # x1.1, then x4
