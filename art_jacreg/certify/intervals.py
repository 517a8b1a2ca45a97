"""Sound bounds on every intermediate value of a network over ``B_p(x, eps) ∩ box``.

Two methods, both returning a :class:`Bounds` with lower/upper bounds on ``h_0, ..., h_n`` (``h_0`` the raw input,
``h_i`` the input of operation ``i``, ``h_n`` the logits):

* :func:`interval_bounds` -- interval bound propagation (IBP) from the box ``[max(x - eps, lo), min(x + eps, hi)]``
  (which contains the ball-and-box set), intersected with deviation bounds ``h_i(x) ± delta ||row||_{p*}`` carried
  through the network with segment Lipschitz constants. For the first Linear/Conv and ``p = 2`` this is exactly
  ``W x ± eps ||W_row||_2``.
* :func:`linear_bounds` -- backward linear bound propagation (CROWN, Zhang et al. 2018,
  https://arxiv.org/abs/1811.00866) for the input of every ReLU/MaxPool and for the logits, each intersected with
  IBP, so they are never looser than :func:`interval_bounds`. The linear bounds are concretised over the input set
  with the box (``a·c - |a|·r``) and, for ``p = 2``, also with the ball (``a·x - eps ||a||_2``), taking the tighter.

The interval step and the linear relaxation are the operations' own rules (:meth:`~.ops.base.Op.interval`,
:meth:`~.ops.base.Op.relax_backward`, e.g. :func:`~.ops.relu.relu_relaxation`); this module only iterates.
:func:`backward_lower` is the shared engine: the lower bound of ``A · h_end`` given bounds on the earlier layers;
rows of convolutional prefixes go through :mod:`.patches` instead (same numbers, less arithmetic).

Certified training calls :func:`interval_bounds` and :func:`backward_lower` on a live network
(:class:`~art_jacreg.certify.network.LiveNetwork`) with training norm estimates as segment bounds: the same rules,
differentiable in the weights (IBP and CROWN-IBP margins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from art_jacreg.certify._common import InputSet, box_deviation, check_network
from art_jacreg.certify.lipschitz import SegmentBound, sound_segments, tail_start
from art_jacreg.certify.network import OpChain, PiecewiseLinearNetwork
from art_jacreg.certify.ops.base import Op, weighted_sum
from art_jacreg.certify.ops.maxpool import maxpool_windows  # noqa: F401 - importable from here, as before
from art_jacreg.certify.ops.relu import relu_relaxation  # noqa: F401 - importable from here, as before
from art_jacreg.certify.patches import patch_elements, patch_lower, patch_supported

__all__ = ["Bounds", "interval_bounds", "linear_bounds", "backward_lower"]

# elements of one (B, rows, features) block in the backward pass: 16 MB in float64, so that a chunk's temporaries
# (a convolution's columns are up to twice as large) stay below glibc's largest mmap threshold (32 MB) and their
# memory is reused; at 32 MB every temporary was mapped afresh (measured: 40 % fewer page faults at 16 MB)
_CHUNK_ELEMENTS = 1 << 21


@dataclass
class Bounds:
    """Element-wise bounds ``lower[i] <= h_i <= upper[i]`` for ``i = 0..n``, each ``(B, *shape_i)``.

    :param lower: Lower bounds, one per layer boundary.
    :param upper: Upper bounds, one per layer boundary.
    :param centre: The values ``h_i(x)`` at the centre of the input set, when computed (:func:`interval_bounds`).
    """

    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    centre: list[torch.Tensor] | None = None

    def subset(self, idx: torch.Tensor, stop: int | None = None) -> Bounds:
        """The bounds of the batch entries ``idx`` (without the centres).

        :param idx: int64 indices into the batch.
        :param stop: Keep only the boundaries ``0 .. stop - 1`` (``None``: all), for a pass that never reads the
            others.
        :return: New bounds.
        """
        return Bounds([t[idx] for t in self.lower[:stop]], [t[idx] for t in self.upper[:stop]])


def _ibp_step(op: Op, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval image of ``[lo, hi]`` under one operation (its own rule, :meth:`~.ops.base.Op.interval`)."""
    return op.interval(lo, hi)


def interval_bounds(net: OpChain, s: InputSet, segment: SegmentBound | None = None, tighten: bool = True) -> Bounds:
    """Interval bound propagation over the input set, intersected with Lipschitz deviation bounds.

    Besides the interval image of each operation (IBP), every value is kept within ``h_i(x) ± delta_a rho_i``:
    ``delta_a`` bounds ``||h_a(x') - h_a(x)||_p`` at the output ``h_a`` of the last ReLU/MaxPool (the input for
    ``a = 0``, where it is ``eps``) and ``rho_i`` bounds, unit by unit, the dual norm (``||.||_2`` for ``p = 2``,
    ``||.||_1`` for ``p = inf``) of the row of the affine map ``h_a -> h_i``: exact for the first Linear/Conv of the
    block (squared weights for ``p = 2``, absolute weights for ``p = inf``), the triangle inequality
    (``|A| rho``) after that. At each ReLU/MaxPool the deviation is carried over as
    ``delta <- min(L_{a->i+1} delta, ||max(hi - h, h - lo)||_p)`` with ``L`` the segment's Lipschitz bound
    (:func:`~art_jacreg.certify.lipschitz.segment_lipschitz`) and the box the interval just computed. For ``p = 2``
    this is what keeps bounds on deep layers from blowing up the way plain IBP does (IBP turns the ball into a box).

    :param net: The network (a live one for certified training).
    :param s: The input set.
    :param segment: Segment Lipschitz bounds (default :func:`~art_jacreg.certify.lipschitz.sound_segments`; training
        passes its norm estimates).
    :param tighten: Intersect with the deviation bounds (``False``: plain IBP).
    :return: Bounds on every ``h_i``, with the centres ``h_i(x)`` (``s.centres`` when the set carries them).
    """
    if segment is None:
        segment = sound_segments(check_network(net))
    lo, hi = s.lo, s.hi
    lows, ups = [lo], [hi]
    centre = s.x  # h_i(x), the image of the centre
    cents = [centre]
    delta, anchor = s.deviation(s.norm), 0
    rho, elementwise = torch.ones(net.input_shape, dtype=s.x.dtype, device=s.x.device), True
    for i, op in enumerate(net.ops):
        lo, hi = op.interval(lo, hi)
        centre = op.forward(centre) if s.centres is None else s.centres[i + 1]
        if not tighten:
            pass
        elif op.affine:  # still inside the affine block that started at `anchor`
            rho, elementwise = op.deviation_rows(rho, elementwise, s.norm)
            e = delta.reshape(-1, *([1] * rho.ndim)) * rho
            lo, hi = torch.maximum(lo, centre - e), torch.minimum(hi, centre + e)
        else:  # the block ends: carry the deviation over to the output of this operation
            box = box_deviation(centre, lo, hi, s.norm)
            delta = torch.minimum(delta * segment(anchor, i + 1, s.norm), box)
            anchor, rho, elementwise = i + 1, torch.ones(op.out_shape, dtype=s.x.dtype, device=s.x.device), True
        lows.append(lo)
        ups.append(hi)
        cents.append(centre)
    return Bounds(lows, ups, cents)


def _concretize(a: torch.Tensor, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Lower bound of ``a · h + const`` over the box ``[lo, hi]``; ``a`` is ``(B, M, *shape)``."""
    return const + weighted_sum(a, (hi + lo) / 2) - weighted_sum(a.abs(), (hi - lo) / 2)


def backward_lower(
    net: OpChain,
    s: InputSet,
    bounds: Bounds,
    a: torch.Tensor,
    end: int,
    start: int = 0,
) -> torch.Tensor:
    """Lower bound of ``a · h_end`` over the input set by linear relaxation of operations ``start..end-1``.

    :param net: The network.
    :param s: The input set.
    :param bounds: Sound bounds on ``h_start, ..., h_end`` (pre-activation bounds of the relaxed operations).
    :param a: Linear functionals ``(B or 1, M, *shape_end)`` (a leading 1 is shared by all samples).
    :param end: Index of the layer boundary the functionals act on.
    :param start: Where to stop and concretise: ``0`` uses the input set (box, and ball for ``p = 2``), otherwise
        the interval ``bounds`` at ``h_start``.
    :return: Lower bounds ``(B, M)``.
    """
    const = torch.zeros(a.shape[:2], dtype=a.dtype, device=a.device)
    for i in range(end - 1, start - 1, -1):
        a, const = net.ops[i].relax_backward(a, const, bounds.lower[i], bounds.upper[i])
    if start > 0:
        return _concretize(a, const, bounds.lower[start], bounds.upper[start])
    low = _concretize(a, const, s.lo, s.hi)
    if s.norm == 2:
        ball = const + weighted_sum(a, s.x) - s.eps[:, None] * a.flatten(2).norm(dim=-1)
        low = torch.maximum(low, ball)
    return low


def relaxation_starts(net: PiecewiseLinearNetwork, norm: float, method: str) -> list[int]:
    """Where the linear relaxations of the margins stop and concretise, cheapest first.

    Through the whole network to the input (``0``) for ``p = inf`` and for ``"linear"``; through the final affine
    block only for ``"interval"`` with ``p = 2`` (measured on the MNIST CNNs: relaxing further never raised an l2
    radius and cost 30 % more time). Where it relaxes to the input, the final affine block alone is tried first: on
    networks trained with interval bounds it is often the tighter of the two.

    :param net: The network.
    :param norm: ``2`` or ``inf``.
    :param method: ``"interval"`` or ``"linear"``.
    :return: Operation indices for :func:`backward_lower`'s ``start``.
    """
    tail = tail_start(net)
    if not (norm == math.inf or method == "linear"):
        return [tail]
    return [tail, 0] if tail > 0 else [0]


def _units_to_tighten(net: PiecewiseLinearNetwork, end: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The units of ``h_end`` whose tighter bounds can change a relaxation, ``(B, *shape_end)`` bool.

    Those the operation at ``end`` names (:meth:`~.ops.base.Op.units_to_tighten`: a ReLU's unstable units; all for
    the logits). Where that operation is followed by another relaxed one (a ReLU, then a MaxPool, whose relaxation
    reads the bounds of every input that can be a window's maximum), also the units that the second one names on its
    input and that can still be positive. On 40 digits of the max-pool CNN this raised the sum of the ``"linear"`` l2
    radii by 6 % over bounding the unstable units alone, to exactly the sum that bounding every unit gives, at about
    half of that cost.
    """
    if end == len(net.ops):
        return torch.ones_like(lo, dtype=torch.bool)
    need = net.ops[end].units_to_tighten(lo, hi)
    if end + 1 < len(net.ops) and not net.ops[end + 1].affine:
        need = need | (net.ops[end + 1].units_to_tighten(*net.ops[end].interval(lo, hi)) & (hi > 0))
    return need


def _crown_layer(
    net: PiecewiseLinearNetwork, s: InputSet, bounds: Bounds, end: int, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tighten the bounds ``[lo, hi]`` of ``h_end`` with CROWN, shape ``(B, *shape_end)``.

    Only the units :func:`_units_to_tighten` names are bounded, each sample its own list, so a unit's bounds do not
    depend on the other samples of the batch. Rows are processed in chunks; a chunk takes only the samples that
    still have units left (a sample with few units is not padded to the longest list of the batch).
    """
    shape = tuple(lo.shape[1:])
    b, n = lo.shape[0], math.prod(shape)
    lo, hi = lo.reshape(b, n).clone(), hi.reshape(b, n).clone()
    need = _units_to_tighten(net, end, lo.reshape(b, *shape), hi.reshape(b, *shape)).reshape(b, n)
    counts = need.sum(1)
    n_rows = int(counts.max())
    if n_rows == 0:
        return lo.reshape(b, *shape), hi.reshape(b, *shape)
    order = torch.argsort(need.to(torch.int8), dim=1, descending=True, stable=True)[:, :n_rows]
    patches = patch_supported(net, end)
    widest = patch_elements(net, end) if patches else max(math.prod(op.in_shape) for op in net.ops[:end])
    live, sub_s, sub = torch.arange(b), s, bounds
    first = 0
    while first < n_rows:
        still = torch.nonzero(counts > first).flatten()
        if still.numel() < live.numel():  # some samples are done: continue with the others only
            live, sub_s = still, replace(s, centres=None).subset(still)
            sub = bounds.subset(still, end)
        nb = live.numel()
        chunk = max(1, min(n_rows - first, _CHUNK_ELEMENTS // max(1, nb * widest * 2)))
        idx = order[live, first : first + chunk]
        m = idx.shape[1]
        if patches:
            low = patch_lower(net, sub_s, sub.lower, sub.upper, end, idx)
        else:
            a = torch.zeros(nb, m, n, dtype=lo.dtype).scatter_(2, idx[:, :, None], 1.0)
            a = torch.cat([a, -a], dim=1).reshape(nb, 2 * m, *shape)
            low = backward_lower(net, sub_s, sub, a, end)
        # only the named units are written: the padding at the end of a sample's list (other units) is dropped, so
        # that bounds do not depend on the batch
        flat = (live[:, None] * n + idx).flatten()
        named = need.view(-1)[flat]
        flat, up = flat[named], -low[:, m:].flatten()[named]
        lo.view(-1)[flat] = torch.maximum(lo.view(-1)[flat], low[:, :m].flatten()[named])
        hi.view(-1)[flat] = torch.minimum(hi.view(-1)[flat], up)
        first += chunk
    return lo.reshape(b, *shape), hi.reshape(b, *shape)


def linear_bounds(net: PiecewiseLinearNetwork, s: InputSet, ibp: Bounds | None = None, logits: bool = True) -> Bounds:
    """CROWN bounds on the input of every ReLU/MaxPool and on the logits, intersected with IBP.

    :param net: The network.
    :param s: The input set.
    :param ibp: Precomputed :func:`interval_bounds` (computed when ``None``).
    :param logits: Tighten the logits too (``False``: their bounds stay interval bounds; the certificates, which
        relax the margins themselves and use only the bounds of the operations' inputs, pass ``False``).
    :return: Bounds on every ``h_i``, each at least as tight as IBP's.
    """
    ibp = interval_bounds(net, s) if ibp is None else ibp
    lows, ups = [s.lo], [s.hi]
    lo, hi = s.lo, s.hi
    # CROWN pays off only for a layer reached through a Linear/Conv after a relaxed operation (or through two
    # Linear/Conv from the input): otherwise interval propagation is already exact for it.
    mixing, relaxed_before = 0, False
    for i, op in enumerate(net.ops):
        if not op.affine:
            if (relaxed_before and mixing > 0) or mixing > 1:
                lo, hi = _crown_layer(net, s, Bounds(lows, ups), i, lo, hi)
            lows[i], ups[i] = lo, hi
            relaxed_before, mixing = True, 0
        elif op.mixes:
            mixing += 1
        lo, hi = op.interval(lo, hi)
        lo, hi = torch.maximum(lo, ibp.lower[i + 1]), torch.minimum(hi, ibp.upper[i + 1])
        lows.append(lo)
        ups.append(hi)
    if logits and ((relaxed_before and mixing > 0) or mixing > 1):
        n = len(net.ops)
        lows[n], ups[n] = _crown_layer(net, s, Bounds(lows, ups), n, lows[n], ups[n])
    return Bounds(lows, ups)
