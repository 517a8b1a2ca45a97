"""Affine operations ``x -> lin(x) + offset``: every rule written once from the linear map, its adjoint and the
entry-wise absolute value and square of its matrix; the operator-norm bounds of a mixing map (Linear, Conv2d).
"""

from __future__ import annotations

import logging
import math

import torch

from art_jacreg.certify._dtype import DTYPE
from art_jacreg.certify.ops.base import NORM_SLACK, Op, Scalar, Tensors
from art_jacreg.certify.ops.patch_geometry import PatchGeometry

logger = logging.getLogger(__name__)

__all__ = ["AffineOp"]  # EXPLICIT_LIMIT and EXPLICIT_MIN_SIDE are documented in art_jacreg.certify.lipschitz

EXPLICIT_LIMIT = 8_000_000  # entries of an explicit operator matrix (64 MB in float64)
EXPLICIT_MIN_SIDE = 512  # and its smaller side for a Conv, 4x that for a Linear (the eigensolver is cubic in it)


class AffineOp(Op):
    """An affine operation ``x -> lin(x) + offset``; its rules follow from the five linear maps below."""

    affine = True
    _offset: torch.Tensor

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
        self, c: torch.Tensor, rho: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, norm: float, lip: Scalar
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

    def power_start(self, generator: torch.Generator) -> torch.Tensor | None:  # noqa: D102
        if not self.mixes:
            return None
        start = torch.randn((1, *self.in_shape), generator=generator, dtype=self.offset.dtype)
        return start.to(self.offset.device)

    def training_norm(  # noqa: D102
        self, norm: float, vector: torch.Tensor | None, n_iter: int
    ) -> tuple[torch.Tensor | float, torch.Tensor | None]:
        # A mixing map: l2 by power iteration on A^T A from the persistent vector (updated without gradient), then
        # ||A u|| (differentiable, a lower estimate converging to the largest singular value); l-inf exactly, as the
        # maximum absolute row sum |A| 1.
        if not self.mixes:
            return super().training_norm(norm, vector, n_iter)
        if norm == 2:
            if vector is None:
                raise ValueError(f"the l2 training norm of {self!r} needs a power-iteration vector (power_start)")
            u = vector.to(self.offset.device, self.offset.dtype)  # follows the model to another device
            with torch.no_grad():
                for _ in range(n_iter):
                    u = self.lin_t(self.lin(u))
                    u = u / u.norm().clamp(min=1e-30)
            return self.lin(u).norm(), u
        ones = torch.ones((1, *self.in_shape), dtype=self.offset.dtype, device=self.offset.device)
        return self.abs_lin(ones).max(), vector

    def mixing_norm(self, norm: float, in_scale: torch.Tensor | None) -> float:
        """:meth:`spectral_upper` for ``norm = 2``, :meth:`inf_norm` otherwise (the rule of Linear and Conv2d)."""
        return self.spectral_upper(in_scale) if norm == 2 else self.inf_norm(in_scale)
