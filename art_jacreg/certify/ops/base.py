"""The rules every operation owns, the base classes that hold the shared ones, and small helpers of those rules.

An operation acts on a batch ``(N, *in_shape)`` and returns ``(N, *out_shape)``. Besides :meth:`Op.forward` it owns
one rule per engine of :mod:`art_jacreg.certify`; the engines iterate over a network's operations and call them:

* :meth:`Op.interval` -- its interval image (interval bound propagation);
* :meth:`Op.relax_backward` -- a backward step of linear bounds on dense rows (CROWN), from bounds on its input;
  :meth:`Op.patch_backward` the same on rows kept as patches (only where :meth:`Op.supports_patches`);
* :meth:`Op.pull_back_interval` -- pulls an interval of Jacobian rows back through it (Fast-Lip);
* :meth:`Op.ball_step` -- pulls a centre plus a dual-norm ball of rows back through it;
* :meth:`Op.operator_norm` -- an upper bound on its operator norm (its Lipschitz constant);
* :meth:`AffineOp.deviation_rows` -- the row norms of an affine block, for deviation bounds.

Rules of an affine operation (:class:`AffineOp`, ``x -> lin(x) + offset``) are written once here from its linear
map, its adjoint ``lin_t`` and the entry-wise absolute value and square of its matrix. Rules of a piecewise-linear
operation use sound bounds ``lower <= input <= upper`` over the input set.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F  # noqa: N812

from art_jacreg.certify._dtype import DTYPE, Shape

logger = logging.getLogger(__name__)

__all__ = ["Op", "AffineOp", "PiecewiseOp", "PatchGeometry", "weighted_sum", "dual_norm"]

Tensors = tuple[torch.Tensor, torch.Tensor]
Pair = tuple[int, int]
EXPLICIT_LIMIT = 8_000_000  # entries of an explicit operator matrix (64 MB in float64)
EXPLICIT_MIN_SIDE = 512  # and its smaller side for a Conv, 4x that for a Linear (the eigensolver is cubic in it)
NORM_SLACK = 1.0 + 1e-9  # relative inflation of computed operator norms (rounding)


def weighted_sum(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_features a * w`` for ``a`` ``(B or 1, M, *shape)`` and ``w`` ``(B, *shape)`` or ``(B, 1, *shape)``.

    :param a: Rows.
    :param w: Per-sample weights.
    :return: ``(B, M)``.
    """
    w = w.reshape(w.shape[0], -1, 1)
    a = a.reshape(a.shape[0], a.shape[1], -1)
    if a.shape[0] != w.shape[0]:
        a = a.expand(w.shape[0], *a.shape[1:])
    return torch.bmm(a, w)[:, :, 0]


def dual_norm(t: torch.Tensor, norm: float) -> torch.Tensor:
    """Dual norm (``2`` for ``p = 2``, ``1`` for ``p = inf``) over all but the first two dimensions.

    :param t: Rows ``(B, M, ...)``.
    :param norm: ``2`` or ``inf``, the norm of the input space.
    :return: ``(B, M)``.
    """
    t = t.flatten(2)
    return t.norm(dim=-1) if norm == 2 else t.abs().sum(-1)


class PatchGeometry:
    """Where rows kept as patches lie on a layer boundary ``(C, H, W)``: patch ``l`` of the ``grid`` covers
    ``size`` pixels from ``(l // grid_w * stride - off, l % grid_w * stride - off)``; ``pos`` ``(B, R)`` picks each
    row's patch (see :mod:`art_jacreg.certify.patches`).

    :param size: Patch height and width.
    :param stride: Distance between neighbouring patches.
    :param off: Offset of the first patch.
    :param grid: Number of patches per column and row (the output positions).
    :param pos: Flat patch index of each row, ``(B, R)``.
    """

    def __init__(self, size: Pair, stride: Pair, off: Pair, grid: Pair, pos: torch.Tensor) -> None:
        self.size, self.stride, self.off, self.grid, self.pos = size, stride, off, grid, pos

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The patches of ``t`` ``(B or 1, C, H, W)`` (or one ``(C, H, W)``) under the rows, zero outside the image.

        :param t: Values on the boundary.
        :return: ``(B, R, C, size_h, size_w)``.
        """
        t = t if t.ndim == 4 else t[None]
        size, stride, off, grid, pos = self.size, self.stride, self.off, self.grid, self.pos
        c, h, w = t.shape[1:]
        need_h, need_w = (grid[0] - 1) * stride[0] + size[0], (grid[1] - 1) * stride[1] + size[1]
        bottom, right = need_h - h - off[0], need_w - w - off[1]
        t = t[:, :, : h + min(bottom, 0), : w + min(right, 0)]
        t = F.pad(t, (off[1], max(right, 0), off[0], max(bottom, 0)))
        cols = F.unfold(t, size, stride=stride)  # (B or 1, C * kh * kw, grid_h * grid_w)
        cols = cols.expand(pos.shape[0], -1, -1)
        picked = cols.gather(2, pos[:, None, :].expand(-1, cols.shape[1], -1))
        return picked.transpose(1, 2).reshape(pos.shape[0], pos.shape[1], c, size[0], size[1])

    def through_conv(self, size: Pair, stride: Pair, padding: Pair) -> PatchGeometry:
        """The geometry one convolution earlier: patches of ``size`` after a transposed convolution.

        :param size: The new patch size.
        :param stride: The convolution's stride.
        :param padding: Its padding.
        :return: A new geometry (``S <- S s``, ``off <- off s + p``).
        """
        new_stride = (self.stride[0] * stride[0], self.stride[1] * stride[1])
        new_off = (self.off[0] * stride[0] + padding[0], self.off[1] * stride[1] + padding[1])
        return PatchGeometry(size, new_stride, new_off, self.grid, self.pos)


class Op:
    """Base class of an operation on a batch of per-sample tensors of shape ``in_shape``.

    Class attributes describe it to the engines: ``affine`` (part of an affine block, no relaxation needed),
    ``mixes`` (an affine map whose rows mix several inputs, as Linear and Conv2d: bound propagation gains from
    relaxing through it), ``absorbs_input_scale`` (:meth:`operator_norm` accepts an element-wise input scale, so a
    preceding element-wise affine is merged into its bound), and :attr:`elementwise_scale`.

    :param in_shape: Per-sample input shape.
    :param out_shape: Per-sample output shape.
    """

    affine: bool = False
    mixes: bool = False
    absorbs_input_scale: bool = False

    def __init__(self, in_shape: Shape, out_shape: Shape) -> None:
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)

    @property
    def elementwise_scale(self) -> torch.Tensor | None:
        """The diagonal of the linear part of an element-wise affine operation (``None`` for any other)."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operation.

        :param x: Batch ``(N, *in_shape)``.
        :return: Batch ``(N, *out_shape)``.
        """
        raise NotImplementedError

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Tensors:
        """Interval image of ``[lo, hi]``.

        :param lo: Lower bounds ``(N, *in_shape)``.
        :param hi: Upper bounds.
        :return: ``(lower, upper)`` of the output.
        """
        raise NotImplementedError

    def relax_backward(self, a: torch.Tensor, const: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> Tensors:
        """One backward step of linear bounds: ``a · out + const >= a' · in + const'`` on the input bounds.

        :param a: Rows on the output ``(B or 1, M, *out_shape)``.
        :param const: Constants ``(B or 1, M)``.
        :param lower: Lower bounds of the input ``(B, *in_shape)`` (unused by affine operations).
        :param upper: Upper bounds.
        :return: ``(a', const')``, rows ``(B or 1, M, *in_shape)``.
        """
        raise NotImplementedError

    def units_to_tighten(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """The units of the input whose tighter bounds can tighten this operation's relaxation (all by default).

        :param lo: Lower bounds of the input (any shape).
        :param hi: Upper bounds.
        :return: Bool mask, same shape.
        """
        return torch.ones_like(lo, dtype=torch.bool)

    def supports_patches(self) -> bool:
        """Whether :meth:`patch_backward` handles this operation (rows kept as patches, see ``patches``)."""
        return False

    def patch_size(self, size: Pair) -> Pair:
        """Size of a patch on the input of this operation for a patch of ``size`` on its output.

        :param size: Patch height and width on the output.
        :return: On the input (unchanged unless the operation is a convolution).
        """
        return size

    def patch_backward(
        self, a: torch.Tensor, const: torch.Tensor, geometry: PatchGeometry, lower: torch.Tensor, upper: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, PatchGeometry]:
        """:meth:`relax_backward` on rows kept as patches.

        :param a: Patch rows ``(B, R, C_out, *geometry.size)``.
        :param const: Constants ``(B, R)``.
        :param geometry: Where the patches lie on the output.
        :param lower: Lower bounds of the input ``(B, *in_shape)``.
        :param upper: Upper bounds.
        :return: ``(a', const', geometry')`` on the input.
        """
        raise NotImplementedError(f"no patch-form rule for {self!r}")

    def pull_back_interval(self, c: torch.Tensor, r: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> Tensors:
        """Pull the row interval ``c ± r`` of Jacobians w.r.t. the output back to the input.

        :param c: Centres ``(B or 1, M, *out_shape)``.
        :param r: Radii, same shape.
        :param lower: Lower bounds of the input over the set ``(B, *in_shape)`` (unused by affine operations).
        :param upper: Upper bounds.
        :return: ``(c', r')`` containing ``row · J`` for every Jacobian ``J`` of the operation on the bounds.
        """
        raise NotImplementedError

    def ball_step(
        self, c: torch.Tensor, rho: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, norm: float, lip: float
    ) -> Tensors:
        """Pull ``{g : ||g - c||_{p*} <= rho}`` back through the operation (a set containing every row pulled back).

        :param c: Centres ``(B or 1, M, *out_shape)``.
        :param rho: Radii ``(B or 1, M)``.
        :param lower: Lower bounds of the input.
        :param upper: Upper bounds.
        :param norm: ``2`` or ``inf`` (``p``).
        :param lip: :meth:`operator_norm` of the operation for ``norm``.
        :return: ``(c', rho')``.
        """
        raise NotImplementedError

    def operator_norm(self, norm: float, in_scale: torch.Tensor | None = None) -> float:
        """Upper bound on the operator norm ``||.||_p -> ||.||_p`` (the Lipschitz constant), ``1`` by default.

        :param norm: ``2`` or ``inf``.
        :param in_scale: An element-wise input scale merged in front (only if ``absorbs_input_scale``).
        :return: The bound.
        """
        return 1.0

    def then_elementwise(self, scale: torch.Tensor, shift: torch.Tensor) -> Op | None:
        """One operation equal to this one followed by ``y -> y * scale + shift``, when it exists.

        :param scale: ``out_shape`` tensor.
        :param shift: ``out_shape`` tensor.
        :return: The folded operation, or ``None`` (kept as two operations).
        """
        return None

    def folded_into(self, prev: Op) -> Op | None:
        """One operation equal to ``prev`` followed by this one, when it exists.

        :param prev: The operation before.
        :return: The folded operation, or ``None``.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_shape} -> {self.out_shape})"


class AffineOp(Op):
    """An affine operation ``x -> lin(x) + offset``; its rules follow from the five linear maps below."""

    affine = True

    def lin(self, x: torch.Tensor) -> torch.Tensor:
        """The linear part ``A x``.

        :param x: Batch ``(N, *in_shape)``.
        :return: ``(N, *out_shape)``.
        """
        raise NotImplementedError

    def lin_t(self, y: torch.Tensor) -> torch.Tensor:
        """The adjoint ``A^T y`` (rows of a Jacobian or of linear bounds flow backwards through it).

        :param y: Batch ``(N, *out_shape)``.
        :return: ``(N, *in_shape)``.
        """
        raise NotImplementedError

    def abs_lin(self, x: torch.Tensor) -> torch.Tensor:
        """``|A| x`` with ``|A|`` the entry-wise absolute value.

        :param x: Batch ``(N, *in_shape)``.
        :return: ``(N, *out_shape)``.
        """
        raise NotImplementedError

    def abs_lin_t(self, y: torch.Tensor) -> torch.Tensor:
        """``|A|^T y``.

        :param y: Batch ``(N, *out_shape)``.
        :return: ``(N, *in_shape)``.
        """
        raise NotImplementedError

    def sq_lin(self, x: torch.Tensor) -> torch.Tensor:
        """``(A * A) x`` with the entry-wise square (squared l2 norms of weighted rows).

        :param x: Batch ``(N, *in_shape)``.
        :return: ``(N, *out_shape)``.
        """
        raise NotImplementedError

    @property
    def offset(self) -> torch.Tensor:
        """The constant part, ``forward(0)``, of shape ``out_shape``."""
        return self._offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``lin(x) + offset``.

        :param x: Batch ``(N, *in_shape)``.
        :return: ``(N, *out_shape)``.
        """
        return self.lin(x) + self.offset

    def rows_t(self, a: torch.Tensor) -> torch.Tensor:
        """Rows ``(B, M, *out_shape)`` pulled back through the linear part: ``a A``, ``(B, M, *in_shape)``."""
        b, m = a.shape[:2]
        return self.lin_t(a.reshape(b * m, *self.out_shape)).reshape(b, m, *self.in_shape)

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Tensors:  # noqa: D102
        c, r = self.forward((hi + lo) / 2), self.abs_lin((hi - lo) / 2)
        return c - r, c + r

    def relax_backward(  # noqa: D102
        self, a: torch.Tensor, const: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> Tensors:
        const = const + (a * self.offset).flatten(2).sum(-1)
        return self.rows_t(a), const

    def pull_back_interval(  # noqa: D102
        self, c: torch.Tensor, r: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> Tensors:
        m = c.shape[1]
        r = self.abs_lin_t(r.reshape(r.shape[0] * m, *self.out_shape)).reshape(r.shape[0], m, *self.in_shape)
        return self.rows_t(c), r

    def ball_step(  # noqa: D102
        self, c: torch.Tensor, rho: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, norm: float, lip: float
    ) -> Tensors:
        return self.rows_t(c), rho * lip  # ||A^T||_{p* -> p*} = ||A||_{p -> p}

    def patch_offset(self, a: torch.Tensor, const: torch.Tensor, geometry: PatchGeometry) -> torch.Tensor:
        """``const + a · offset`` for patch rows ``a`` (the constant part of a patch-form backward step)."""
        return const + (a * geometry.gather(self.offset)).flatten(2).sum(-1)

    def deviation_rows(self, rho: torch.Tensor, exact: bool, norm: float) -> tuple[torch.Tensor, bool]:
        """Per-unit bounds on the dual norms of the rows of ``h_a -> h_out`` from those of ``h_a -> h_in``.

        :param rho: Dual norms (``||.||_2`` for ``p = 2``, ``||.||_1`` for ``p = inf``) of the rows on the input.
        :param exact: Whether the map ``h_a -> h_in`` is element-wise (then ``rho`` is its diagonal's magnitude).
        :param norm: ``2`` or ``inf``.
        :return: ``(rho', exact')``: exact for the first mixing map of a block with ``p = 2`` (squared weights),
            for l1 rows and for element-wise maps; the triangle inequality ``|A| rho`` otherwise.
        """
        if exact and norm == 2 and self.mixes:
            return self.sq_lin(rho.square()[None])[0].sqrt(), False  # exact row norms of A diag(rho)
        return self.abs_lin(rho[None])[0], exact and not self.mixes

    # -- operator norms of a mixing map (Linear, Conv2d) ------------------------------------------------------------

    explicit_side_factor = 4  # the explicit matrix's smaller side may be this many times EXPLICIT_MIN_SIDE

    def explicit_matrix(self, in_scale: torch.Tensor | None) -> torch.Tensor:
        """The matrix of ``h -> lin(in_scale * h)``, shape ``(n_out, n_in)``.

        :param in_scale: Optional element-wise input scale ``in_shape``.
        :return: float64 matrix.
        """
        n_in = math.prod(self.in_shape)
        basis = torch.eye(n_in, dtype=DTYPE)
        if in_scale is not None:
            basis = basis * in_scale.reshape(1, -1)
        return self.lin(basis.reshape(n_in, *self.in_shape)).reshape(n_in, -1).T

    def structured_spectral_bound(self, in_scale: torch.Tensor | None) -> float:
        """An upper bound on ``||A diag(in_scale)||_2`` from the operation's structure (``inf`` when none)."""
        return math.inf

    def spectral_upper(self, in_scale: torch.Tensor | None = None) -> float:
        """Upper bound on ``||A diag(in_scale)||_2``, never a power-iteration estimate.

        The smallest of :meth:`structured_spectral_bound` and the exact largest singular value of the explicit
        matrix (float64 eigenvalues of its smaller Gram matrix, inflated by ``1e-9``) when it is small enough
        (:data:`EXPLICIT_LIMIT` entries, smaller side ``explicit_side_factor * EXPLICIT_MIN_SIDE``); Schur's bound
        ``sqrt(||A||_1 ||A||_inf)`` when neither applies.

        :param in_scale: Optional element-wise input scale.
        :return: The bound.
        """
        n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        bound = self.structured_spectral_bound(in_scale)
        if n_in * n_out <= EXPLICIT_LIMIT and min(n_in, n_out) <= self.explicit_side_factor * EXPLICIT_MIN_SIDE:
            a = self.explicit_matrix(in_scale)
            gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
            top = float(torch.linalg.eigvalsh(gram)[-1].clamp(min=0.0))
            bound = min(bound, math.sqrt(top) * NORM_SLACK)
        if math.isinf(bound):
            s = torch.ones(self.in_shape, dtype=DTYPE) if in_scale is None else in_scale.abs()
            row_sums = self.abs_lin(s[None])[0]  # ||A||_inf = max row sum of |A| diag|s|
            col_sums = self.abs_lin_t(torch.ones((1, *self.out_shape), dtype=DTYPE))[0] * s  # ||A||_1
            logger.info("operator of %r too large for an exact SVD; using sqrt(||A||_1 ||A||_inf)", self)
            bound = math.sqrt(float(row_sums.max()) * float(col_sums.max())) * NORM_SLACK
        return bound

    def inf_norm(self, in_scale: torch.Tensor | None = None) -> float:
        """Exact ``||A diag(in_scale)||_{inf -> inf}`` (maximum absolute row sum), inflated by ``1e-9``.

        :param in_scale: Optional element-wise input scale.
        :return: The norm.
        """
        s = torch.ones(self.in_shape, dtype=DTYPE) if in_scale is None else in_scale.abs()
        return float(self.abs_lin(s[None]).max()) * NORM_SLACK

    def mixing_norm(self, norm: float, in_scale: torch.Tensor | None) -> float:
        """:meth:`spectral_upper` for ``norm = 2``, :meth:`inf_norm` otherwise (the rule of Linear and Conv2d)."""
        return self.spectral_upper(in_scale) if norm == 2 else self.inf_norm(in_scale)


class PiecewiseOp(Op):
    """A monotone piecewise-linear operation (ReLU, MaxPool): its rules need bounds on its input."""

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Tensors:  # noqa: D102
        return self.forward(lo), self.forward(hi)  # monotone

    @staticmethod
    def rows_for(a: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
        """Rows ``(1 or B, M, ...)`` expanded to the batch of the bounds ``(B, ...)``."""
        return a.expand(lower.shape[0], *a.shape[1:])

    def pull_back_interval(  # noqa: D102
        self, c: torch.Tensor, r: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> Tensors:
        c, r = self.rows_for(c, lower), self.rows_for(r, lower)
        lo, hi = self.pull_back_hull(c - r, c + r, lower, upper)
        return (hi + lo) / 2, (hi - lo) / 2

    def pull_back_hull(self, lo: torch.Tensor, hi: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> Tensors:
        """Pull the row interval ``[lo, hi]`` (as bounds, ``(B, M, *out_shape)``) back to the input.

        :param lo: Lower bounds of the rows.
        :param hi: Upper bounds.
        :param lower: Lower bounds of the input over the set.
        :param upper: Upper bounds.
        :return: ``(lo', hi')`` on the input.
        """
        raise NotImplementedError
