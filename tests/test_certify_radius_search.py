"""The radius search of ``certify.radius``: it returns only radii whose certificate held, and closes the bracket to
``RADIUS_RTOL`` on decreasing margin-excess curves, also when certified points report only a lower bound of their
excess (as the early-stopping decision does); the ``"anderson-bjorck"`` rule of ``"linear"`` closes it to
``LINEAR_RADIUS_RTOL`` in fewer evaluations on the curved excess of CROWN."""

from __future__ import annotations

import math

import torch

from art_jacreg.certify.radius import LINEAR_RADIUS_RTOL, RADIUS_RTOL, _quadratic_root, _search

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
        elif kind == "crown":  # fitted to CROWN's l2 excess on a max-pool CNN (0.79, 0.40, 0.19 at t = 0.5, 0.8, 0.9)
            value = 1.0 - 0.3 * t - 0.7 * t**3
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


def _run_linear(kind: str, steps: int = 20, start_ratio: float = 1 / 1.3) -> tuple[torch.Tensor, list]:
    excess, log = _curve(kind)
    start = ROOTS * start_ratio  # the interval radius in the real search, whose excess is not known
    rule = "anderson-bjorck"
    radius = _search(excess, start.clone(), torch.full_like(ROOTS, math.inf), torch.ones_like(ROOTS), steps, rule,
                     LINEAR_RADIUS_RTOL)  # fmt: skip
    return radius, log


def test_anderson_bjorck_rule_closes_the_bracket_and_stays_certified():
    for kind in ("linear", "concave", "crown"):
        for start_ratio in (1 / 1.3, 1 / 1.02, 1 / 3.5):  # far below the limit, just below it, as for l-inf
            radius, log = _run_linear(kind, start_ratio=start_ratio)
            assert bool((radius < ROOTS).all()), (kind, start_ratio)
            assert bool((radius >= ROOTS / (1 + LINEAR_RADIUS_RTOL)).all()), (kind, start_ratio, radius / ROOTS)
            for i in range(len(ROOTS)):  # every returned radius was evaluated and held
                held = [float(e[k]) for idx, e, ok in log for k in range(len(idx)) if int(idx[k]) == i and ok[k]]
                assert float(radius[i]) in held, (kind, start_ratio, i)


def test_anderson_bjorck_rule_needs_few_evaluations_on_a_crown_like_curve():
    # measured: 4, 4 and 5 rounds from 1/1.3, 1/1.02 and 1/3.5 of the limit, each to 1 % (5, 5 and 6 without the
    # parabola); the bisection it replaced (x1.1, x4, then 5 geometric steps) spent 7 rounds and left brackets up to
    # 4.4 % wide
    for start_ratio in (1 / 1.3, 1 / 1.02, 1 / 3.5):
        _, log = _run_linear("crown", start_ratio=start_ratio)
        assert len(log) <= 5, (start_ratio, len(log))


def test_quadratic_root_is_exact_on_lines_and_parabolas_without_cancellation():
    a = torch.tensor([0.5, 0.5, 1e-6], dtype=torch.float64)
    b = torch.tensor([2.0, 2.0, 3e-6], dtype=torch.float64)
    e0 = torch.ones(3, dtype=torch.float64)
    # a line with its root at 1 (the parabola degenerates: its second root is at infinity), the parabola
    # 1 - 0.2 t - 0.8 t^2 (root 1), and a steep line with its root at 2e-6
    f = [lambda t: 1 - t, lambda t: 1 - 0.2 * t - 0.8 * t**2, lambda t: 1 - t / 2e-6]
    f_a = torch.stack([g(a[i]) for i, g in enumerate(f)])
    f_b = torch.stack([g(b[i]) for i, g in enumerate(f)])
    root = _quadratic_root(e0, a, f_a, b, f_b)
    assert torch.allclose(root, torch.tensor([1.0, 1.0, 2e-6], dtype=torch.float64), rtol=1e-12, atol=0)
    assert torch.isnan(_quadratic_root(e0, a, torch.full_like(a, math.nan), b, f_b)).all()  # f_a unknown


def test_anderson_bjorck_rule_with_a_small_budget_returns_a_certified_radius():
    radius, log = _run_linear("crown", steps=1)
    for i in range(len(ROOTS)):
        held = [float(e[k]) for idx, e, ok in log for k in range(len(idx)) if int(idx[k]) == i and ok[k]]
        assert float(radius[i]) in held or math.isclose(float(radius[i]), float(ROOTS[i] / 1.3)), i
