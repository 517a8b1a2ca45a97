"""Certificates: certified predictions, radii, logit bounds and robust-loss bounds over ``B_p(x, eps) ∩ box``.

Every function combines sound lower bounds on linear functionals ``row · f(x')`` of the logits over the input set
(THEORY.md section 2), keeping the largest:

* ``"lipschitz"``: ``row · f(x) - eps * L_row`` with a global Lipschitz constant (:mod:`.lipschitz`);
* ``"interval"``: additionally, from interval pre-activation bounds tightened by Lipschitz deviation bounds
  (:func:`.interval_bounds`): for ``p = 2`` the linear relaxation of the final affine block and the local Jacobian
  bounds of :func:`.local_deviation_lower` (split, centre-and-ball, and the interval Jacobian with the box); for
  ``p = inf`` the linear relaxation of the whole network (CROWN-IBP), which beat every Jacobian bound on every MNIST
  digit measured. Only rows the Lipschitz bound cannot settle are refined when a threshold is known (certification);
* ``"linear"``: all of the above for both norms, also with CROWN pre-activation bounds.

So a richer method is never looser than a cheaper one. Bounds are computed in float64. A prediction counts as
certified only if every margin's lower bound exceeds ``1e-5 * (1 + max_k |f_k(x)|)``, a slack that absorbs the
float32 rounding of the model the attacker actually runs. Inputs are raw (before preprocessing); ``eps`` and radii
are in raw input units; ``clip_values`` is the box ART's attacks stay in (``None`` for no box).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from art_jacreg._validate import validate_method, validate_norm
from art_jacreg.certify._common import (
    InputSet,
    check_network,
    check_x,
    input_set,
    margin_rows,
    validate_eps,
    validate_labels,
)
from art_jacreg.certify._dtype import DTYPE
from art_jacreg.certify.intervals import Bounds, backward_lower, interval_bounds, linear_bounds, relaxation_starts
from art_jacreg.certify.lipschitz import global_lipschitz_bound, row_lipschitz, segment_lipschitz
from art_jacreg.certify.local_jacobian import (
    l11_norm_bound,
    local_deviation_lower,
    spectral_norm_bound,
    split_bound,
)
from art_jacreg.certify.network import PiecewiseLinearNetwork

__all__ = [
    "CERTIFY_SLACK",
    "candidate_bounds",
    "certify_at",
    "certify_slack",
    "certified_loss_bound",
    "functional_lower_bounds",
    "logit_bounds",
    "margin_lower",
    "prepare_inputs",
]

CERTIFY_SLACK = 1e-5


def prepare_inputs(
    net: Any, x: Any, eps: Any, norm: Any, clip_values: Any, method: Any
) -> tuple[PiecewiseLinearNetwork, InputSet, str, torch.Tensor]:
    """Validate the arguments of a public certificate function and build its input set.

    :param net: The network.
    :param x: Raw inputs ``(B, *input_shape)``.
    :param eps: Radius ``>= 0`` (a number or one per sample).
    :param norm: ``2`` or ``inf`` (any accepted spelling).
    :param clip_values: ``None`` or ``(min, max)``.
    :param method: ``"lipschitz"``, ``"interval"`` or ``"linear"``.
    :return: ``(net, input_set, method, logits)``, the logits ``f(x)`` in float64.
    :raises ValueError: On invalid arguments.
    :raises TypeError: If ``net`` is not a network.
    """
    net = check_network(net)
    norm, method = validate_norm(norm), validate_method(method)
    x = check_x(net, x)
    s = input_set(x, validate_eps(eps, x.shape[0]), norm, clip_values)
    with torch.no_grad():
        logits = net(x)
    return net, s, method, logits


def functional_lower_bounds(
    net: PiecewiseLinearNetwork,
    s: InputSet,
    rows: torch.Tensor,
    method: str,
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    candidates: list[Bounds] | None = None,
) -> torch.Tensor:
    """Sound lower bounds of ``rows · f(x')`` over the input set ``s`` (the engine behind the public functions).

    :param net: The network.
    :param s: The input set.
    :param rows: Output functionals ``(B or 1, M, K)``.
    :param method: ``"lipschitz"``, ``"interval"`` or ``"linear"``.
    :param logits: ``f(x)`` at the centres, ``(B, K)`` float64.
    :param target: Optional ``(B, 1)`` or ``(B, M)`` thresholds: a row whose global Lipschitz bound already exceeds
        its threshold keeps that bound (still sound) instead of being refined, which saves most of the work when
        certifying (a margin far from the decision boundary needs no local analysis).
    :param candidates: The method's pre-activation bounds on ``s`` from :func:`candidate_bounds`, when the caller
        needs them too (computed here otherwise); only without ``target``.
    :return: ``(B, M)`` lower bounds, the largest of the method's sound bounds.
    :raises ValueError: If ``target`` has another shape, or both ``target`` and ``candidates`` are given.
    """
    b, m = logits.shape[0], rows.shape[1]
    if target is not None and (target.ndim != 2 or target.shape[0] != b or target.shape[1] not in (1, m)):
        raise ValueError(f"`target` must have shape ({b}, 1) or ({b}, {m}), got {tuple(target.shape)}.")
    if target is not None and candidates is not None:
        raise ValueError("`candidates` are bounds on the whole input set: give them only without `target`.")
    with torch.no_grad():
        value = (rows * logits[:, None]).sum(-1)
        low = value - s.eps[:, None] * row_lipschitz(net, rows, s.norm)
        if method == "lipschitz":
            return low
        need = torch.ones_like(low, dtype=torch.bool) if target is None else low <= target
        samples, which = need.nonzero(as_tuple=True)
        if samples.numel() == 0:
            return low
        uniq, inverse = torch.unique(samples, return_inverse=True)
        sub = s if target is None else s.subset(uniq)
        candidates = candidate_bounds(net, sub, method) if candidates is None else candidates
        full = rows.expand(low.shape[0], *rows.shape[1:])
        if bool(need.all()):  # every row of every sample: keep the (B, M) layout
            pairs, prows, pvalue = sub, full, value
        else:  # only the (sample, row) pairs that need it, each its own batch entry with its sample's bounds
            candidates = [Bounds([t[inverse] for t in c.lower], [t[inverse] for t in c.upper]) for c in candidates]
            pairs, prows, pvalue = sub.subset(inverse), full[samples, which][:, None], value[samples, which][:, None]
        refined = torch.full_like(pvalue, -math.inf)
        for bounds in candidates:  # "linear" keeps every "interval" bound too, so it is never looser
            refined = torch.maximum(refined, _relaxation_lower(net, pairs, bounds, prows, method))
            if pairs.norm == 2 or method == "linear":
                refined = torch.maximum(refined, pvalue + local_deviation_lower(net, bounds, prows, pairs))
        if bool(need.all()):
            return torch.maximum(low, refined)
        low[samples, which] = torch.maximum(low[samples, which], refined[:, 0])
        return low


def candidate_bounds(net: PiecewiseLinearNetwork, s: InputSet, method: str) -> list[Bounds]:
    """The pre-activation bounds a method works from: interval bounds, and for ``"linear"`` also CROWN's.

    :param net: The network.
    :param s: The input set.
    :param method: ``"lipschitz"`` (none), ``"interval"`` or ``"linear"``.
    :return: A list of :class:`~art_jacreg.certify.intervals.Bounds`, the tightest last.
    """
    if method == "lipschitz":
        return []
    ibp = interval_bounds(net, s)
    return [ibp] if method == "interval" else [ibp, linear_bounds(net, s, ibp, logits=False)]


def _relaxation_lower(
    net: PiecewiseLinearNetwork, s: InputSet, bounds: Bounds, rows: torch.Tensor, method: str
) -> torch.Tensor:
    """The largest linear-relaxation lower bound of ``rows · f`` over :func:`~.intervals.relaxation_starts`."""
    starts = relaxation_starts(net, s.norm, method)
    lows = [backward_lower(net, s, bounds, rows, len(net.ops), start) for start in starts]
    return torch.stack(lows).amax(dim=0)


def logit_bounds(
    net: PiecewiseLinearNetwork,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    norm: float | str,
    clip_values: tuple[Any, Any] | None = None,
    method: str = "interval",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound element-wise bounds on the logits over ``B_p(x, eps) ∩ box``.

    :param net: The network from :func:`~art_jacreg.certify.build_network`.
    :param x: Raw inputs ``(B, *input_shape)``.
    :param eps: Radius ``>= 0`` (a number or one per sample), raw units.
    :param norm: ``2`` or ``inf``.
    :param clip_values: ``None`` or ``(min, max)`` of the valid input box.
    :param method: ``"lipschitz"``, ``"interval"`` or ``"linear"``.
    :return: ``(lower, upper)``, each float64 ``(B, K)``.
    :raises ValueError: On invalid arguments.
    """
    net, s, method, logits = prepare_inputs(net, x, eps, norm, clip_values, method)
    k = net.num_classes
    eye = torch.eye(k, dtype=DTYPE)
    low = functional_lower_bounds(net, s, torch.cat([eye, -eye])[None], method, logits)
    return low[:, :k], -low[:, k:]


def margin_lower(
    net: PiecewiseLinearNetwork,
    s: InputSet,
    labels: torch.Tensor,
    method: str,
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    candidates: list[Bounds] | None = None,
) -> torch.Tensor:
    """:func:`functional_lower_bounds` of the margins ``f_y - f_j``, ``j != y``.

    :param net: The network.
    :param s: The input set.
    :param labels: int64 ``(B,)``.
    :param method: ``"lipschitz"``, ``"interval"`` or ``"linear"``.
    :param logits: ``f(x)`` ``(B, K)``.
    :param target: As in :func:`functional_lower_bounds`.
    :param candidates: As in :func:`functional_lower_bounds`.
    :return: ``(B, K - 1)`` lower bounds.
    """
    rows, _ = margin_rows(labels, net.num_classes)
    return functional_lower_bounds(net, s, rows, method, logits, target, candidates)


def certify_slack(logits: torch.Tensor) -> torch.Tensor:
    """The margin a certified prediction needs beyond zero: ``CERTIFY_SLACK * (1 + max_k |f_k(x)|)``, ``(B,)``.

    :param logits: ``(B, K)``.
    :return: ``(B,)``.
    """
    return CERTIFY_SLACK * (1.0 + logits.abs().amax(dim=1))


def certify_at(
    net: PiecewiseLinearNetwork,
    x: torch.Tensor,
    labels: Any,
    eps: float | torch.Tensor,
    norm: float | str,
    clip_values: tuple[Any, Any] | None = None,
    method: str = "interval",
) -> torch.Tensor:
    """Whether class ``labels`` provably wins on all of ``B_p(x, eps) ∩ box``.

    Certified when every margin ``m_j = f_y - f_j`` (``j != y``) has a lower bound above the rounding slack over the
    set, e.g. ``m_j(x) > eps * sup ||grad m_j||_{p*}`` or a positive bound-propagation lower bound.

    :param net: The network.
    :param x: Raw inputs ``(B, *input_shape)``.
    :param labels: Classes to certify (usually the predictions), indices ``(B,)`` or one-hot ``(B, K)``.
    :param eps: Radius ``>= 0`` (a number or one per sample).
    :param norm: ``2`` or ``inf``.
    :param clip_values: ``None`` or ``(min, max)``.
    :param method: ``"lipschitz"``, ``"interval"`` or ``"linear"``.
    :return: Bool tensor ``(B,)``.
    :raises ValueError: On invalid arguments.
    """
    net, s, method, logits = prepare_inputs(net, x, eps, norm, clip_values, method)
    labels = validate_labels(labels, s.x.shape[0], net.num_classes)
    from art_jacreg.certify.decide import margins_certified  # decide builds on this module

    return margins_certified(net, s, labels, method, logits, certify_slack(logits))


def certified_loss_bound(
    net: PiecewiseLinearNetwork,
    x: torch.Tensor,
    labels: Any,
    eps: float | torch.Tensor,
    norm: float | str,
    clip_values: tuple[Any, Any] | None = None,
    method: str = "interval",
) -> torch.Tensor:
    """Sound upper bound on ``max`` cross-entropy over ``B_p(x, eps) ∩ box``; the smaller of two bounds.

    (a) THEORY.md section 2: ``l + sqrt(2) eps sup ||J||_2`` (``p = 2``) or ``l + eps sup ||J||_{inf->1}``
    (``p = inf``; ``<= ||J||_{1,1}``), the sup bounded globally (:func:`global_lipschitz_bound`) and, for
    ``"interval"``/``"linear"``, by split interval Jacobians (:func:`.split_bound`: spectral norm / entry sum of the
    magnitudes of ``J_i`` times the prefix Lipschitz bound, the best boundary ``i``).
    (b) ``CE = logsumexp_k (z_k - z_y) <= logsumexp_k U_k`` with ``U_k`` an upper bound of ``z_k - z_y`` over the set
    (``U_y = 0``): minus the margin lower bounds of the method.

    :param net: The network.
    :param x: Raw inputs ``(B, *input_shape)``.
    :param labels: True labels, indices ``(B,)`` or one-hot ``(B, K)``.
    :param eps: Radius ``>= 0`` (a number or one per sample).
    :param norm: ``2`` or ``inf``.
    :param clip_values: ``None`` or ``(min, max)``.
    :param method: ``"lipschitz"``, ``"interval"`` or ``"linear"``.
    :return: float64 tensor ``(B,)``.
    :raises ValueError: On invalid arguments.
    """
    net, s, method, logits = prepare_inputs(net, x, eps, norm, clip_values, method)
    labels = validate_labels(labels, s.x.shape[0], net.num_classes)
    with torch.no_grad():
        loss = torch.logsumexp(logits, dim=1) - logits.gather(1, labels[:, None])[:, 0]
        candidates = candidate_bounds(net, s, method)  # shared by the margin bounds and the Jacobian bound
        low = margin_lower(net, s, labels, method, logits, candidates=candidates)
        bound_b = torch.logsumexp(torch.cat([torch.zeros_like(low[:, :1]), -low], dim=1), dim=1)
        sup_j = torch.full_like(loss, global_lipschitz_bound(net, s.norm))
        if candidates:
            bounds = candidates[-1]
            reduce = spectral_norm_bound if s.norm == 2 else l11_norm_bound

            def split_norm(c: torch.Tensor, r: torch.Tensor, i: int) -> torch.Tensor:
                return reduce(c, r) * segment_lipschitz(net, 0, i, s.norm)

            eye = torch.eye(net.num_classes, dtype=DTYPE)[None]
            sup_j = torch.minimum(sup_j, split_bound(net, bounds, eye, split_norm)[2])
        bound_a = loss + (math.sqrt(2.0) if s.norm == 2 else 1.0) * s.eps * sup_j
    return torch.minimum(bound_a, bound_b)
