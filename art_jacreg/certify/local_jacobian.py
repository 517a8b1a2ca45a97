"""Interval Jacobians over the input set (the Fast-Lip idea of Weng et al. 2018, https://arxiv.org/abs/1804.09699).

Rows ``c ± r`` of the Jacobian of output functionals (margins ``e_y - e_j``, logits ``e_k``) are pulled back from
the output: through an affine operation ``A`` they become ``c A ± r |A|``; through a ReLU whose pre-activation lies
in ``[l, u]`` the slope is ``1`` (``l >= 0``), ``0`` (``u <= 0``) or anything in ``[0, 1]``, which turns the row
interval ``[a, b]`` into ``[min(0, a), max(0, b)]``; through a MaxPool window the row goes to the single input that
provably dominates, or else to any of the inputs that can still be the maximum (the same hull with ``0`` on each).
These are the operations' own rules (:meth:`~.ops.base.Op.pull_back_interval`, :meth:`~.ops.base.Op.ball_step`);
this module only iterates over the operations. Pre-activation bounds come from :mod:`art_jacreg.certify.intervals`
and hold on the whole input set, so every Jacobian of every point of the set lies in the result, and by
``f(x') - f(x) = int_0^1 J(x + t (x' - x)) (x' - x) dt`` (the set is convex and contains ``x``) so does every
difference quotient.

Two refinements use the intervals at every layer boundary (:func:`pull_back`), not only at the input:
:func:`split_bound` multiplies a local bound on the last layers by a global one on the first, and
:func:`local_deviation_lower` also keeps rows as an exact centre plus a dual-norm ball below a boundary, which keeps
the sign cancellations that intervals lose through layers with many undecided ReLUs (docs: theory page).

Everything is batched: samples and rows travel together through batched convolutions, no Python loop over samples.

Certified training runs :func:`local_deviation_lower` on a live network with training norm estimates as segment
bounds, depth-limited (``stop``: the rows are pulled back only down to a layer boundary, the layers below bounded by
their norms), differentiable in the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from art_jacreg.certify._common import InputSet, check_network
from art_jacreg.certify.intervals import Bounds
from art_jacreg.certify.lipschitz import SegmentBound, sound_segments
from art_jacreg.certify.network import OpChain
from art_jacreg.certify.ops.base import dual_norm as _dual

__all__ = [
    "pull_back",
    "split_bound",
    "local_deviation_lower",
    "jacobian_interval",
    "gradient_dual_norm",
    "mean_value_lower",
    "spectral_norm_bound",
    "l11_norm_bound",
]


def pull_back(
    net: OpChain, bounds: Bounds, rows: torch.Tensor, stop: int = 0
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Pull output rows back through the network, yielding the interval Jacobian of ``h_i -> rows · f`` at every
    layer boundary ``i = n, n - 1, ..., stop``.

    :param net: The network.
    :param bounds: Bounds on every ``h_i`` over the input set.
    :param rows: Output functionals ``(B or 1, M, K)``.
    :param stop: The last boundary reached (``0``: the input).
    :return: An iterator of ``(i, centre, radius)``, each interval ``(B or 1, M, *shape_i)``: ``rows · J_i(x')`` lies
        in ``centre ± radius`` for every ``x'`` of the set, ``J_i`` the Jacobian of ``f`` with respect to ``h_i``.
    """
    c, r = rows, torch.zeros_like(rows)
    yield len(net.ops), c, r
    for i in range(len(net.ops) - 1, stop - 1, -1):
        c, r = net.ops[i].pull_back_interval(c, r, bounds.lower[i], bounds.upper[i])
        yield i, c, r


def jacobian_interval(net: OpChain, bounds: Bounds, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval ``centre ± radius`` containing ``rows · J(x')`` for every ``x'`` of the set the bounds hold on.

    :param net: The network.
    :param bounds: Bounds on every ``h_i`` over the input set.
    :param rows: Output functionals ``(B or 1, M, K)``.
    :return: ``(centre, radius)``, each ``(B, M, *input_shape)``.
    """
    *_, (_, c, r) = pull_back(net, bounds, rows)
    return c, r


def split_bound(
    net: OpChain,
    bounds: Bounds,
    rows: torch.Tensor,
    reduce: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    stop: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The smallest over layer boundaries ``i`` of ``reduce(centre_i, radius_i, i)``, and the input interval.

    Splitting ``J = J_i F_i`` with ``F_i`` the Jacobian of ``x -> h_i`` gives, for any norms,
    ``||rows · J|| <= ||rows · J_i|| ||F_i||``: the last layers are bounded *locally* (through the interval of
    ``J_i``, which keeps the sign cancellations of the exact rows that a full interval Jacobian loses) and the first
    ones *globally* (``||F_i||`` by the prefix Lipschitz constant). ``reduce`` computes that product for one ``i``.

    :param net: The network.
    :param bounds: Bounds on every ``h_i`` over the input set.
    :param rows: Output functionals ``(B or 1, M, K)``.
    :param reduce: ``(centre_i, radius_i, i) -> bound`` for the split at boundary ``i``, any shape broadcasting
        across boundaries.
    :param stop: The last boundary reached (``0``: the input).
    :return: ``(centre, radius, best)``: the interval Jacobian on boundary ``stop`` (on the input, as
        :func:`jacobian_interval`, for ``stop = 0``) and the element-wise smallest bound.
    """
    best = None
    for i, c, r in pull_back(net, bounds, rows, stop):
        value = reduce(c, r, i)
        best = value if best is None else torch.minimum(best, value)
    assert best is not None  # pull_back always yields the output boundary
    return c, r, best


def default_spawn(net: OpChain, norm: float) -> set[int]:
    """The layer boundaries where :func:`local_deviation_lower` starts a centre-and-ball candidate by default.

    For ``p = 2``: the output, and the input of every run of consecutive ReLU/MaxPool operations (after an affine
    one). A ball started inside a run, e.g. between a ReLU and the MaxPool after it, adds the unstable units'
    ``||c_unstable||_{p*} / 2`` to its radius whole, where the interval started before the ReLU keeps them entry by
    entry and takes the norm after (the norm of a sum is at most the sum of the norms); on four max-pool CNNs
    (plain, Jacobian-regularised and two certified-trained) such balls never gave a better bound and cost a sixth
    of the certification time. For ``p = inf`` none (the l1 balls grow with the ``inf -> inf`` norms and never beat
    the interval there).

    :param net: The network.
    :param norm: ``2`` or ``inf``.
    :return: Boundaries in ``1..n``.
    """
    if norm != 2:
        return set()
    ops = net.ops
    return {len(ops)} | {i for i in range(1, len(ops)) if not ops[i].affine and ops[i - 1].affine}


def _ball_step(
    net: OpChain,
    i: int,
    bounds: Bounds,
    c: torch.Tensor,
    rho: torch.Tensor,
    norm: float,
    segment: SegmentBound | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pull ``{g : ||g - c||_{p*} <= rho}`` back through operation ``i`` (a set containing every row pulled back):
    the operation's :meth:`~.ops.base.Op.ball_step` with its own Lipschitz bound.

    Affine: ``c A``, ``rho ||A||`` (``||A^T||_{p* -> p*} = ||A||_{p -> p}``). ReLU: the slope of an unstable unit is
    ``1/2 ± 1/2``, so ``c`` takes the midpoint slopes and ``rho`` grows by ``||c_unstable||_{p*} / 2``. MaxPool: a
    dominated window routes ``c`` to its maximum; the others, of unknown routing, move into the ball through the
    pooling's Lipschitz constant, which also scales ``rho``. ``segment`` defaults to the sound bounds.
    """
    lip = (sound_segments(check_network(net)) if segment is None else segment)(i, i + 1, norm)
    return net.ops[i].ball_step(c, rho, bounds.lower[i], bounds.upper[i], norm, lip)


def local_deviation_lower(
    net: OpChain,
    bounds: Bounds,
    rows: torch.Tensor,
    s: InputSet,
    spawn: set[int] | None = None,
    segment: SegmentBound | None = None,
    stop: int = 0,
) -> torch.Tensor:
    """Lower bound on ``rows · (f(x') - f(x))`` over the set from local Jacobian information; three families.

    * Split (:func:`split_bound`): at each boundary ``i``, ``-||rows · J_i||_{p*} L_i ||x' - x||_p`` with the prefix
      Lipschitz bound ``L_i`` of ``x -> h_i`` (for ``p = inf`` also through l2: ``L2_i ||x' - x||_2``).
    * Centre and ball (:func:`_ball_step`): from boundary ``k`` down, the rows are kept as an exact centre ``c`` plus
      a dual-norm ball of radius ``rho`` (seeded with the interval's radius, ``||r_k||_{p*}``), so the sign
      cancellations of the centre survive the first layers where unstable units make intervals useless; the bound
      is ``min_{x'} c · (x' - x) - rho ||x' - x||_p``.
    * The full interval Jacobian on the input with the box (:func:`mean_value_lower`).

    With ``stop > 0`` the rows go down to boundary ``stop`` only: the split is taken at the boundaries ``>= stop``,
    each ball is finished there by the prefix bound, ``-(||c||_{p*} + rho) L_stop ||x' - x||_p``, and the third
    family is left out.

    :param net: The network.
    :param bounds: Bounds on every ``h_i`` over the input set ``s``.
    :param rows: Output functionals ``(B or 1, M, K)``.
    :param s: The input set.
    :param spawn: Boundaries where a centre-and-ball candidate starts (default :func:`default_spawn`).
    :param segment: Segment Lipschitz bounds (default: the sound ones; certified training passes its estimates).
    :param stop: The boundary the rows are pulled back to (``0``: the input).
    :return: ``(B, M)`` lower bounds, the largest of the families.
    """
    n = len(net.ops)
    if spawn is not None and not set(spawn) <= set(range(n + 1)):
        raise ValueError(f"`spawn` must hold layer boundaries in 0..{n}, got {sorted(spawn)!r}.")
    if not (isinstance(stop, int) and 0 <= stop <= n):
        raise ValueError(f"`stop` must be a layer boundary in 0..{n}, got {stop!r}.")
    if spawn is None:
        spawn = default_spawn(net, s.norm)
    seg = sound_segments(check_network(net)) if segment is None else segment
    dev2, dev_p = s.deviation(2.0)[:, None], s.deviation(s.norm)[:, None]
    seeds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def split_deviation(c: torch.Tensor, r: torch.Tensor, i: int) -> torch.Tensor:
        if i in spawn and i > stop:  # remember the interval where a centre-and-ball candidate starts
            seeds[i] = (c, _dual(r, s.norm))
        if s.norm == 2:
            return gradient_dual_norm(c, r, 2.0) * seg(0, i, 2.0) * dev2
        split_2 = gradient_dual_norm(c, r, 2.0) * seg(0, i, 2.0) * dev2
        split_inf = gradient_dual_norm(c, r, math.inf) * seg(0, i, math.inf) * dev_p
        return torch.minimum(split_2, split_inf)

    centre, radius, split = split_bound(net, bounds, rows, split_deviation, stop)
    best = -split if stop > 0 else torch.maximum(-split, mean_value_lower(centre, radius, s))
    for k, (c, rho) in seeds.items():
        for i in range(k - 1, stop - 1, -1):
            c, rho = _ball_step(net, i, bounds, c, rho, s.norm, seg)
        if stop > 0:  # finish with the prefix: |g · (h_stop(x') - h_stop(x))| <= ||g||_{p*} L_stop ||x' - x||_p
            ball = -(_dual(c, s.norm) + rho) * seg(0, stop, s.norm) * dev_p
        else:
            ball = mean_value_lower(c, torch.zeros_like(c), s) - rho * dev_p
        best = torch.maximum(best, ball)
    return best


def gradient_dual_norm(centre: torch.Tensor, radius: torch.Tensor, norm: float) -> torch.Tensor:
    """Upper bound on ``||g||_{p*}`` over ``g in centre ± radius`` (the dual norm of ``|centre| + radius``).

    :param centre: ``(B, M, *input_shape)``.
    :param radius: Same shape.
    :param norm: ``2`` (dual 2) or ``inf`` (dual 1).
    :return: ``(B, M)``.
    """
    return _dual(centre.abs() + radius, norm)


def mean_value_lower(centre: torch.Tensor, radius: torch.Tensor, s: InputSet) -> torch.Tensor:
    """Lower bound of ``row · (f(x') - f(x))`` over the input set from an interval containing its gradients.

    Two sound bounds, the larger is returned: the dual-norm one ``-eps ||(|c| + r)||_{p*}``, and the box one
    ``sum_i min(g_i * d_i)`` over ``g_i in c_i ± r_i`` and ``d_i in [lo_i - x_i, hi_i - x_i]`` (the box around the set),
    which accounts for ``clip_values`` and, for ``p = inf``, is never worse than the first.

    :param centre: ``(B, M, *input_shape)``.
    :param radius: Same shape.
    :param s: The input set.
    :return: ``(B, M)``.
    """
    g_lo, g_hi = (centre - radius).flatten(2), (centre + radius).flatten(2)
    d_lo, d_hi = (s.lo - s.x).flatten(1)[:, None], (s.hi - s.x).flatten(1)[:, None]
    corner = torch.minimum(torch.minimum(g_lo * d_lo, g_lo * d_hi), torch.minimum(g_hi * d_lo, g_hi * d_hi))
    low = corner.sum(-1)
    if s.norm == 2:
        low = torch.maximum(low, -s.eps[:, None] * gradient_dual_norm(centre, radius, 2.0))
    return low


def spectral_norm_bound(centre: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Upper bound on ``sup ||J||_2`` over ``J in centre ± radius``: the spectral norm of the magnitude matrix.

    ``||J||_2 <= || |J| ||_2 <= ||M||_2`` for ``M = |centre| + radius >= |J|`` entry-wise (the spectral norm is
    monotone on non-negative matrices); computed exactly from the ``K x K`` Gram matrix, and never above the
    Frobenius norm of ``M``.

    :param centre: ``(B, K, *input_shape)``.
    :param radius: Same shape.
    :return: ``(B,)``.
    """
    mag = (centre.abs() + radius).flatten(2)
    gram = mag @ mag.transpose(1, 2)
    top = torch.linalg.eigvalsh(gram)[:, -1].clamp(min=0).sqrt() * (1 + 1e-9)
    return torch.minimum(top, mag.flatten(1).norm(dim=-1) * (1 + 1e-12))


def l11_norm_bound(centre: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Upper bound on ``sup ||J||_{1,1}`` over ``J in centre ± radius``: the sum of ``|centre| + radius``.

    :param centre: ``(B, K, *input_shape)``.
    :param radius: Same shape.
    :return: ``(B,)``.
    """
    return (centre.abs() + radius).flatten(1).sum(-1)
