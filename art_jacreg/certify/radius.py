"""Certified radii: the largest ``eps`` at which :func:`~art_jacreg.certify.certificates.certify_at` holds, found
by a closed form (``"lipschitz"``) or by bracketing and geometric bisection over the certificates of
:mod:`art_jacreg.certify.certificates` (``"interval"``, ``"linear"``).

The other certificate functions (:func:`~.certificates.logit_bounds`, :func:`~.certificates.certify_at`,
:func:`~.certificates.certified_loss_bound`, :func:`~.certificates.functional_lower_bounds`,
:func:`~.certificates.candidate_bounds`) are importable from here too, where they lived before.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from art_jacreg.certify._common import InputSet, input_set, margin_rows, validate_labels
from art_jacreg.certify._dtype import DTYPE
from art_jacreg.certify.certificates import (  # noqa: F401 - the names below also stay importable from here
    CERTIFY_SLACK,
    candidate_bounds,
    certified_loss_bound,
    certify_at,
    certify_slack,
    functional_lower_bounds,
    logit_bounds,
    margin_lower,
    prepare_inputs,
)
from art_jacreg.certify.decide import margins_certified
from art_jacreg.certify.lipschitz import row_lipschitz
from art_jacreg.certify.network import PiecewiseLinearNetwork

__all__ = ["certified_radius", "RADIUS_RTOL"]

RADIUS_RTOL = 5e-3  # bisection stops once the bracket is this tight (relative)


def _box_diameter(s: InputSet, clip_values: Any, norm: float) -> torch.Tensor:
    """Per-sample radius beyond which the set no longer grows (the clip box's diameter), ``inf`` without a box."""
    if clip_values is None:
        return torch.full((s.x.shape[0],), math.inf, dtype=DTYPE)
    big = input_set(s.x, torch.full_like(s.eps, 1e30), norm, clip_values)
    width = (big.hi - big.lo).flatten(1)
    return width.amax(dim=1) if norm == math.inf else width.norm(dim=1)


def certified_radius(
    net: PiecewiseLinearNetwork,
    x: torch.Tensor,
    labels: Any,
    norm: float | str,
    clip_values: tuple[Any, Any] | None = None,
    method: str = "interval",
    max_radius: float | None = None,
    n_bisect: int = 10,
) -> torch.Tensor:
    """A certified radius per sample: :func:`certify_at` holds at the returned value (so on every smaller ball).

    ``"lipschitz"``: closed form ``min_j (m_j(x) - slack) / L_j``. ``"interval"``: start from the Lipschitz radius
    (certified by it too), try 1.1 times it, then grow by factors of 4 until certification fails (or ``max_radius`` /
    the clip box's diameter is reached), then bisect geometrically at most ``n_bisect`` times or until the bracket is
    within a relative :data:`RADIUS_RTOL`, re-evaluating only the samples still in play. ``"linear"``: the same from
    the interval radius (``"linear"`` certifies wherever ``"interval"`` does) with ``max(3, n_bisect // 2)``
    bisection steps, since each CROWN evaluation is expensive (about 0.1 s per sample on an MNIST CNN). The result is a
    lower bound of the method's exact limit and is ``0`` where nothing is certified (e.g. ``labels`` is not the
    prediction).

    :param net: The network.
    :param x: Raw inputs ``(B, *input_shape)``.
    :param labels: The predictions to certify, indices ``(B,)`` or one-hot ``(B, K)``.
    :param norm: ``2`` or ``inf``.
    :param clip_values: ``None`` or ``(min, max)``.
    :param method: ``"lipschitz"``, ``"interval"`` or ``"linear"``.
    :param max_radius: Largest radius searched (default: the clip box's diameter, unbounded without a box).
    :param n_bisect: Bisection steps after bracketing.
    :return: float64 tensor ``(B,)`` of radii in raw input units.
    :raises ValueError: On invalid arguments.
    """
    net, s, method, logits = prepare_inputs(net, x, 0.0, norm, clip_values, method)
    labels = validate_labels(labels, s.x.shape[0], net.num_classes)
    if not isinstance(n_bisect, int) or n_bisect < 0:
        raise ValueError(f"`n_bisect` must be an int >= 0, got {n_bisect!r}.")
    cap = _box_diameter(s, clip_values, s.norm)
    if max_radius is not None:
        if not (isinstance(max_radius, (int, float)) and max_radius > 0):
            raise ValueError(f"`max_radius` must be a number > 0, got {max_radius!r}.")
        cap = cap.clamp(max=float(max_radius))
    rows, _ = margin_rows(labels, net.num_classes)
    slack = certify_slack(logits)
    with torch.no_grad():
        margins = (rows * logits[:, None]).sum(-1)
        lip = row_lipschitz(net, rows, s.norm)
    ratio = torch.where(lip > 0, (margins - slack[:, None]) / lip, torch.full_like(lip, math.inf))
    ratio = torch.where(margins > slack[:, None], ratio, torch.zeros_like(ratio))
    lo = torch.minimum(ratio.amin(dim=1).clamp(min=0) * (1 - 1e-7), cap)
    if method == "lipschitz":
        return lo

    def certified(idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        sub = input_set(s.x[idx], eps, s.norm, clip_values)
        return margins_certified(net, sub, labels[idx], method, logits[idx], slack[idx])

    if method == "linear":  # "linear" certifies wherever "interval" does: start from the interval radius
        r_int = certified_radius(net, s.x, labels, s.norm, clip_values, "interval", max_radius, n_bisect)
        lo = torch.maximum(lo, r_int)
    hi = torch.full_like(lo, math.inf)
    growth = 1.1  # first ask whether the method beats the current radius at all, then grow by 4
    for _ in range(32):  # bracket: grow until certification fails or the cap is reached
        idx = torch.nonzero((lo > 0) & (lo < cap) & torch.isinf(hi)).flatten()
        if idx.numel() == 0:
            break
        trial = torch.minimum(lo[idx] * growth, cap[idx])
        ok = certified(idx, trial)
        lo[idx[ok]], hi[idx[~ok]] = trial[ok], trial[~ok]
        growth = 4.0
    for _ in range(n_bisect if method == "interval" else max(3, n_bisect // 2)):
        idx = torch.nonzero((lo > 0) & torch.isfinite(hi) & (hi > lo * (1 + RADIUS_RTOL))).flatten()
        if idx.numel() == 0:
            break
        mid = torch.sqrt(lo[idx] * hi[idx])
        ok = certified(idx, mid)
        lo[idx[ok]], hi[idx[~ok]] = mid[ok], mid[~ok]
    return lo
