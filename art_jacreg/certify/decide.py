"""Certification decisions that stop as soon as they are settled: whether every margin beats its threshold.

:func:`~art_jacreg.certify.certificates.functional_lower_bounds` computes the *largest* of a method's sound lower
bounds for every row. A yes/no certificate (:func:`~.certificates.certify_at`, every step of the radius search in
:func:`~.radius.certified_radius`) only needs to know whether that largest bound exceeds the threshold, and it does
exactly when one of the bounds does. :func:`margins_certified` therefore evaluates the bound families from cheap to
expensive (the global Lipschitz bound; per candidate bounds the linear relaxation, the split interval Jacobian, then
one centre-and-ball candidate after the other; CROWN's pre-activation bounds only when a sample is still open) and
drops every (sample, row) pair as soon as one family settles it. The decision is the same as thresholding
:func:`~.certificates.functional_lower_bounds` (each family is computed by the same code on the same inputs, up to
the order of floating-point sums), only cheaper: a margin far from the boundary never reaches the expensive families.
The linear relaxations take the open rows of one sample together, so that the relaxation of each operation is
computed once per sample (for l-inf, where most of the nine margins stay open, 2.5 times faster than once per row).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch

from art_jacreg.certify._common import InputSet, margin_rows
from art_jacreg.certify.intervals import Bounds, backward_lower, interval_bounds, linear_bounds, relaxation_starts
from art_jacreg.certify.lipschitz import row_lipschitz, segment_lipschitz
from art_jacreg.certify.local_jacobian import _ball_step, default_spawn, gradient_dual_norm, mean_value_lower, pull_back
from art_jacreg.certify.network import PiecewiseLinearNetwork
from art_jacreg.certify.ops.base import dual_norm

__all__ = ["margin_excess", "margins_certified", "subset_bounds"]

Family = Callable[[torch.Tensor], torch.Tensor]


def subset_bounds(bounds: Bounds, idx: torch.Tensor, stop: int | None = None) -> Bounds:
    """The bounds of the batch entries ``idx``.

    :param bounds: Bounds on a batch.
    :param idx: int64 indices into the batch.
    :param stop: Keep only the boundaries ``0 .. stop - 1`` (``None``: all), for a pass that never reads the others.
    :return: A new :class:`~art_jacreg.certify.intervals.Bounds` (:meth:`~art_jacreg.certify.intervals.Bounds.subset`).
    """
    return bounds.subset(idx, stop)


class _Pairs:
    """The (sample, row) pairs still open, each a batch entry with one row (the layout of ``margin_lower``)."""

    def __init__(self, s: InputSet, rows: torch.Tensor, value: torch.Tensor, low: torch.Tensor, thr: torch.Tensor):
        self.samples, self.which = (low <= thr).nonzero(as_tuple=True)
        self.uniq, self.inverse = torch.unique(self.samples, return_inverse=True)
        # one input set per pair (the local families) and one per sample (the relaxations; only it needs centres)
        self.s, self.sample_set = replace(s, centres=None).subset(self.samples), s.subset(self.uniq)
        self.rows = rows.expand(low.shape[0], *rows.shape[1:])[self.samples, self.which][:, None]
        self.value = value[self.samples, self.which][:, None]
        self.thr = thr[self.samples, self.which][:, None]
        self.best = low[self.samples, self.which][:, None].clone()

    def open(self) -> torch.Tensor:
        """Indices of the pairs not yet settled."""
        return (self.best <= self.thr).any(dim=1).nonzero().flatten()

    def offer(self, idx: torch.Tensor, bound: torch.Tensor) -> None:
        """Record the sound lower bounds ``bound`` ``(len(idx), 1)`` of the pairs ``idx``."""
        self.best[idx] = torch.maximum(self.best[idx], bound)


def _local_families(
    net: PiecewiseLinearNetwork, pairs: _Pairs, bounds: Bounds, idx: torch.Tensor
) -> list[tuple[torch.Tensor, Family]]:
    """The split-and-interval family of :func:`~.local_jacobian.local_deviation_lower` evaluated on ``idx``, then
    one lazily evaluated family per centre-and-ball candidate (the same spawn boundaries and arithmetic).
    """
    s, rows = pairs.s.subset(idx), pairs.rows[idx]
    spawn = default_spawn(net, s.norm)
    dev2, dev_p = s.deviation(2.0)[:, None], s.deviation(s.norm)[:, None]
    seeds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    best = None
    for i, c, r in pull_back(net, bounds, rows):
        if i in spawn and i > 0:
            seeds[i] = (c, dual_norm(r, s.norm))
        bound = gradient_dual_norm(c, r, 2.0) * segment_lipschitz(net, 0, i, 2.0) * dev2
        if s.norm == math.inf:
            split_inf = gradient_dual_norm(c, r, math.inf) * segment_lipschitz(net, 0, i, math.inf) * dev_p
            bound = torch.minimum(bound, split_inf)
        best = bound if best is None else torch.minimum(best, bound)
    assert best is not None
    pairs.offer(idx, pairs.value[idx] + torch.maximum(-best, mean_value_lower(c, r, s)))

    def ball(k: int) -> Family:
        def family(sub: torch.Tensor) -> torch.Tensor:  # sub indexes into idx
            c = seeds[k][0].expand(len(idx), *seeds[k][0].shape[1:])[sub]
            rho = seeds[k][1].expand(len(idx), -1)[sub]
            whole = len(sub) == len(idx)  # nothing settled since the split: no copies
            b, ss = (bounds, s) if whole else (subset_bounds(bounds, sub, k), s.subset(sub))
            for i in range(k - 1, -1, -1):  # operations below k only
                c, rho = _ball_step(net, i, b, c, rho, ss.norm)
            return pairs.value[idx[sub]] + mean_value_lower(c, torch.zeros_like(c), ss) - rho * dev_p[sub]

        return family

    return [(idx, ball(k)) for k in sorted(seeds)]  # the cheapest first: fewer operations below k


def _by_sample(pairs: _Pairs, idx: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The pairs ``idx`` grouped by their sample, without padding: the samples with the same number ``w`` of pairs
    in ``idx`` come together.

    :return: An iterator of ``(samples, which, slot)``: the samples (indices into ``pairs.uniq``), the positions in
        ``idx`` of their pairs, and where each of those pairs goes in a ``(len(samples), w)`` layout (flat index).
    """
    samples, group = torch.unique(pairs.inverse[idx], return_inverse=True)
    counts = torch.bincount(group, minlength=len(samples))
    order = torch.argsort(group, stable=True)
    rank = torch.empty_like(group)
    rank[order] = torch.arange(len(idx)) - (torch.cumsum(counts, 0) - counts)[group[order]]
    for width in torch.unique(counts).tolist():
        chosen = (counts == width).nonzero().flatten()
        place = torch.full_like(counts, -1)
        place[chosen] = torch.arange(len(chosen))
        which = (counts[group] == width).nonzero().flatten()
        yield samples[chosen], which, place[group[which]] * width + rank[which]


def _offer_relaxation(net: PiecewiseLinearNetwork, pairs: _Pairs, bounds: Bounds, start: int) -> bool:
    """Offer the linear relaxation of operations ``start..`` to the open pairs; return whether any stay open.

    The open rows of one sample go back together (samples with as many open rows batched together, no padding), so
    each relaxation is computed once per sample, not once per pair; every row's bound is the same computation.
    """
    idx = pairs.open()
    if idx.numel() == 0:
        return False
    for samples, which, slot in _by_sample(pairs, idx):
        rows = torch.zeros(len(samples) * (len(which) // len(samples)), pairs.rows.shape[-1], dtype=pairs.rows.dtype)
        rows[slot] = pairs.rows[idx[which], 0]
        if len(samples) == len(pairs.uniq):
            sub, s = bounds, pairs.sample_set
        else:
            sub, s = subset_bounds(bounds, samples), pairs.sample_set.subset(samples)
        low = backward_lower(net, s, sub, rows.reshape(len(samples), -1, rows.shape[-1]), len(net.ops), start)
        pairs.offer(idx[which], low.flatten()[slot][:, None])
    return bool(pairs.open().numel() > 0)


def _run_families(net: PiecewiseLinearNetwork, pairs: _Pairs, bounds: Bounds, method: str) -> None:
    """Offer every family of one set of candidate bounds (on the samples ``pairs.uniq``) to the pairs still open."""
    for start in relaxation_starts(net, pairs.s.norm, method):
        if not _offer_relaxation(net, pairs, bounds, start):
            return
    if not (pairs.s.norm == 2 or method == "linear"):
        return
    local = pairs.open()
    if local.numel() == 0:
        return
    for base, family in _local_families(net, pairs, subset_bounds(bounds, pairs.inverse[local]), local):
        still = (pairs.best[base] <= pairs.thr[base]).any(dim=1).nonzero().flatten()
        if still.numel() == 0:
            return
        pairs.offer(base[still], family(still))


def _crown_where_open(net: PiecewiseLinearNetwork, pairs: _Pairs, ibp: Bounds) -> Bounds:
    """CROWN's bounds for the samples of ``pairs.uniq`` that still have an open pair, the interval bounds ``ibp``
    for the others (the families never read those again).

    CROWN's bounds of a sample do not depend on its batch (:func:`~.intervals.linear_bounds`), so they are those of
    :func:`~.certificates.margin_lower` (to rounding) without the CROWN passes of the samples already settled.
    """
    still = torch.unique(pairs.inverse[pairs.open()])
    if len(still) == len(pairs.uniq):
        return linear_bounds(net, pairs.sample_set, ibp, logits=False)
    crown = linear_bounds(net, pairs.sample_set.subset(still), ibp.subset(still), logits=False)
    lower = [t.index_copy(0, still, c) for t, c in zip(ibp.lower, crown.lower, strict=True)]
    upper = [t.index_copy(0, still, c) for t, c in zip(ibp.upper, crown.upper, strict=True)]
    return Bounds(lower, upper)


def margins_certified(
    net: PiecewiseLinearNetwork,
    s: InputSet,
    labels: torch.Tensor,
    method: str,
    logits: torch.Tensor,
    slack: torch.Tensor,
) -> torch.Tensor:
    """Whether every margin ``f_y - f_j`` (``j != y``) has a sound lower bound above ``slack`` over the set:
    ``margin_excess(...) > 0``, with the arguments of :func:`margin_excess`.

    Equal to ``(margin_lower(net, s, labels, method, logits, slack[:, None]) > slack[:, None]).all(1)``
    (:func:`~.certificates.margin_lower`), but every (sample, row) pair stops at the first bound family that
    settles it (see the module docstring).

    :return: Bool ``(B,)``.
    """
    return margin_excess(net, s, labels, method, logits, slack) > 0


def margin_excess(
    net: PiecewiseLinearNetwork,
    s: InputSet,
    labels: torch.Tensor,
    method: str,
    logits: torch.Tensor,
    slack: torch.Tensor,
) -> torch.Tensor:
    """The smallest, over the rows ``j != y``, of the best margin lower bound found minus ``slack``: certified
    exactly where it is ``> 0`` (this is :func:`margins_certified` before the comparison).

    Where it is ``<= 0`` every bound family ran, so it is the method's own value. Where it is ``> 0`` the families
    may have stopped early: the value is then a lower bound of the method's value (enough to guide a radius search).

    :param net: The network.
    :param s: The input set.
    :param labels: int64 ``(B,)``.
    :param method: ``"lipschitz"``, ``"interval"`` or ``"linear"``.
    :param logits: ``f(x)`` ``(B, K)``, float64.
    :param slack: ``(B,)`` thresholds.
    :return: float64 ``(B,)``.
    """
    rows, _ = margin_rows(labels, net.num_classes)
    thr = slack[:, None].expand(-1, rows.shape[1])
    with torch.no_grad():
        value = (rows * logits[:, None]).sum(-1)
        low = value - s.eps[:, None] * row_lipschitz(net, rows, s.norm)
        if method == "lipschitz" or bool((low > thr).all()):
            return (low - thr).amin(dim=1)
        pairs = _Pairs(s, rows, value, low, thr)
        sub = pairs.sample_set
        ibp = interval_bounds(net, sub)
        _run_families(net, pairs, ibp, method)
        if method == "linear" and pairs.open().numel() > 0:
            _run_families(net, pairs, _crown_where_open(net, pairs, ibp), method)
        low[pairs.samples, pairs.which] = pairs.best[:, 0]
    return (low - thr).amin(dim=1)
