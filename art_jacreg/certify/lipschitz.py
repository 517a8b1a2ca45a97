"""Global Lipschitz constants from *upper* bounds on layer operator norms (THEORY.md section 2, way 1).

Each operation owns its bound (:meth:`~art_jacreg.certify.ops.base.Op.operator_norm`); never a power-iteration
estimate (that is a lower bound of the largest singular value). l2: the exact largest singular value of the explicit
operator matrix of a Linear/Conv layer (float64 eigenvalues of its smaller Gram matrix, inflated by a relative
``1e-9`` for rounding) when the matrix is small (:data:`EXPLICIT_LIMIT`, :data:`EXPLICIT_MIN_SIDE`); for a
convolution also the exact norm of a circular convolution containing it (stride phases + 2-D DFT, see
:meth:`~art_jacreg.certify.ops.conv.Conv2d.circular_spectral_bound`), the smaller of the two;
``sqrt(||A||_1 ||A||_inf)`` (Schur's bound) as the last resort. An element-wise affine (preprocessing, BatchNorm that
could not be folded) is merged into the Linear/Conv after it. ReLU: 1. MaxPool: 1 for ``inf -> inf``; for l2,
``sqrt(c)`` with ``c`` the largest number of windows one input belongs to (1 when windows do not overlap). AvgPool is
a (depthwise) convolution and gets its exact norm.

l-inf: ``inf -> inf`` induced norms (maximum absolute row sum, padding included), chained as
``||grad m||_1 <= ||row of the last layers||_1 * prod ||W_l||_{inf->inf}``, or through l2 with
``||delta||_2 <= sqrt(d) ||delta||_inf``, whichever is smaller.

Margins use the composed rows of the last affine layers, ``W_y - W_j``, much tighter than ``2 ||W||``.

The engines read segment bounds through a :data:`SegmentBound` ``(start, stop, norm) -> bound``: the sound
:func:`segment_lipschitz` for certificates (:func:`sound_segments`), or products of the operations' differentiable
training estimates (:func:`training_segments`, :meth:`~art_jacreg.certify.ops.base.Op.training_norm`) for certified
training, which are never certificates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from art_jacreg._validate import validate_norm
from art_jacreg.certify._common import check_network
from art_jacreg.certify._dtype import DTYPE
from art_jacreg.certify.network import OpChain, PiecewiseLinearNetwork
from art_jacreg.certify.ops.affine import EXPLICIT_LIMIT, EXPLICIT_MIN_SIDE
from art_jacreg.certify.ops.base import NORM_SLACK as _SLACK

__all__ = [
    "layer_operator_norms",
    "global_lipschitz_bound",
    "row_lipschitz",
    "segment_lipschitz",
    "sound_segments",
    "training_segments",
    "SegmentBound",
    "tail_start",
    "EXPLICIT_LIMIT",
    "EXPLICIT_MIN_SIDE",
]


#: ``(start, stop, norm) -> upper bound (or training estimate) of the Lipschitz constant of h_start -> h_stop``.
SegmentBound = Callable[[int, int, float], "float | torch.Tensor"]


def sound_segments(net: PiecewiseLinearNetwork) -> SegmentBound:
    """The sound segment bounds of ``net`` (:func:`segment_lipschitz`, cached in the network).

    :param net: The network.
    :return: The :data:`SegmentBound`.
    """
    return lambda start, stop, norm: segment_lipschitz(net, start, stop, norm)


def training_segments(norms: Sequence[float | torch.Tensor], norm: float) -> SegmentBound:
    """Segment estimates for certified training: products of per-operation training norms (differentiable).

    :param norms: One estimate per operation (:meth:`~art_jacreg.certify.ops.base.Op.training_norm`) for ``norm``.
    :param norm: The norm they were computed for.
    :return: The :data:`SegmentBound` (``1`` for an empty segment); it refuses another norm.
    """

    def segment(start: int, stop: int, p: float) -> float | torch.Tensor:
        if p != norm:
            raise ValueError(f"training norms were computed for norm={norm}, not {p}")
        total: float | torch.Tensor = 1.0
        for value in norms[start:stop]:
            total = total * value
        return total

    return segment


def layer_operator_norms(net: PiecewiseLinearNetwork, norm: float | str = 2) -> list[float]:
    """Upper bounds on the operator norm of every operation of ``net`` on its own (one per ``net.ops`` entry).

    :param net: The network.
    :param norm: ``2`` (spectral norms) or ``inf`` (``inf -> inf`` induced norms, maximum absolute row sums).
    :return: One float per operation; the Lipschitz constant of ReLU and reshapes is ``1``.
    """
    norm = validate_norm(norm)
    net = check_network(net)
    return [op.operator_norm(norm) for op in net.ops]


def segment_lipschitz(net: PiecewiseLinearNetwork, start: int, stop: int, norm: float) -> float:
    """Upper bound on the Lipschitz constant of ``h_start -> h_stop`` (operations ``start..stop-1``) in ``||.||_p``.

    The product of the operations' operator-norm upper bounds, each element-wise affine merged into the Linear/Conv
    after it (a tighter bound than multiplying the two). Cached in the network's
    :attr:`~art_jacreg.certify.network.PiecewiseLinearNetwork.lipschitz_cache` per ``(start, stop, norm)``.

    :param net: The network.
    :param start: First layer boundary.
    :param stop: Last layer boundary (``start <= stop <= len(net.ops)``).
    :param norm: ``2`` (spectral norms) or ``inf`` (``inf -> inf`` norms).
    :return: The bound (``1`` for an empty segment).
    :raises ValueError: Unless ``0 <= start <= stop <= len(net.ops)`` and ``norm`` is ``2`` or ``inf``.
    """
    net, norm = check_network(net), validate_norm(norm)
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= len(net.ops)):
        raise ValueError(
            f"`start` and `stop` must be layer boundaries with 0 <= start <= stop <= {len(net.ops)}, "
            f"got start={start!r}, stop={stop!r}."
        )
    cache = net.lipschitz_cache
    key = ("segment", start, stop, norm)
    if key not in cache:
        total, pending, first = 1.0, None, start
        for i in range(start, stop):
            op = net.ops[i]
            scale = op.elementwise_scale
            if scale is not None:
                pending = scale if pending is None else pending * scale
                continue
            if pending is not None and not op.absorbs_input_scale:
                total *= float(pending.abs().max()) * _SLACK
            op_key = ("op", first, i, norm)  # the operation with the element-wise affines from `first` merged in
            if op_key not in cache:
                cache[op_key] = op.operator_norm(norm, pending if op.absorbs_input_scale else None)
            total *= cache[op_key]
            pending, first = None, i + 1
        if pending is not None:
            total *= float(pending.abs().max()) * _SLACK
        cache[key] = total
    return cache[key]


def tail_start(net: OpChain) -> int:
    """Index of the first operation of the final affine block (after the last ReLU/MaxPool).

    :param net: The network.
    :return: ``0`` for a purely affine network.
    """
    idx = [i for i, op in enumerate(net.ops) if not op.affine]
    return idx[-1] + 1 if idx else 0


def tail_rows(net: OpChain, rows: torch.Tensor) -> torch.Tensor:
    """Pull output rows back through the final affine block: ``rows @ T`` on ``h_t``.

    :param net: The network.
    :param rows: ``(B, M, K)``.
    :return: ``(B, M, *shape_t)``.
    """
    a = rows
    for op in reversed(net.ops[tail_start(net) :]):
        a = op.rows_t(a)
    return a


def row_lipschitz(net: OpChain, rows: torch.Tensor, norm: float, segment: SegmentBound | None = None) -> torch.Tensor:
    """Global Lipschitz constants of ``x -> row · f(x)`` w.r.t. ``||x||_p`` (dual-norm gradient bounds).

    :param net: The network.
    :param rows: ``(B, M, K)`` output functionals (e.g. margin rows ``e_y - e_j``).
    :param norm: ``2`` or ``inf``.
    :param segment: Segment bounds (default :func:`sound_segments`; training estimates give an estimate).
    :return: ``(B, M)`` upper bounds on ``sup_x ||grad_x (row · f)(x)||_{p*}``.
    """
    if segment is None:
        segment = sound_segments(check_network(net))
    t = tail_start(net)
    a = tail_rows(net, rows).flatten(2)
    if norm == 2:
        return a.norm(dim=-1) * segment(0, t, 2.0)
    lip2 = a.norm(dim=-1) * segment(0, t, 2.0)
    d = math.prod(net.input_shape)
    return torch.minimum(a.abs().sum(-1) * segment(0, t, math.inf), lip2 * math.sqrt(d) * _SLACK)


def global_lipschitz_bound(net: PiecewiseLinearNetwork, norm: float | str = 2) -> float:
    """Upper bound on ``sup_x ||J(x)||``: spectral norm for ``norm=2``, ``inf -> 1`` norm for ``norm=inf``.

    For ``norm=inf`` this is the Lipschitz constant from ``(R^d, l_inf)`` to ``(R^K, l_1)`` that the l-inf robust
    loss bound needs (THEORY.md section 2): ``min(sum_k L_k, sqrt(K d) * L_2)`` with ``L_k`` the l-inf Lipschitz
    constant of logit ``k``.

    :param net: The network.
    :param norm: ``2`` or ``inf``.
    :return: The bound (a float).
    """
    norm = validate_norm(norm)
    net = check_network(net)
    k = net.num_classes
    lip2 = segment_lipschitz(net, 0, tail_start(net), 2.0)
    tail = tail_rows(net, torch.eye(k, dtype=DTYPE)[None])[0].flatten(1)  # (K, n_t)
    gram = tail @ tail.T
    lip2 *= math.sqrt(float(torch.linalg.eigvalsh(gram)[-1].clamp(min=0.0))) * _SLACK
    if norm == 2:
        return lip2
    rows = row_lipschitz(net, torch.eye(k, dtype=DTYPE)[None], math.inf)[0]
    return min(float(rows.sum()), math.sqrt(k * math.prod(net.input_shape)) * lip2 * _SLACK)
