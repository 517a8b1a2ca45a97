"""The rules every operation owns, the base classes that hold the shared ones, and small helpers of those rules.

An operation acts on a batch ``(N, *in_shape)`` and returns ``(N, *out_shape)``. Besides :meth:`Op.forward` it owns
one rule per engine of :mod:`art_jacreg.certify`; the engines iterate over a network's operations and call them:

* :meth:`Op.interval` -- its interval image (interval bound propagation);
* :meth:`Op.relax_backward` -- a backward step of linear bounds on dense rows (CROWN), from bounds on its input;
  :meth:`Op.patch_backward` the same on rows kept as patches (only where :meth:`Op.supports_patches`);
* :meth:`Op.pull_back_interval` -- pulls an interval of Jacobian rows back through it (Fast-Lip);
* :meth:`Op.ball_step` -- pulls a centre plus a dual-norm ball of rows back through it;
* :meth:`Op.operator_norm` -- an upper bound on its operator norm (its Lipschitz constant);
* :meth:`~.affine.AffineOp.deviation_rows` -- the row norms of an affine block, for deviation bounds;
* :meth:`Op.training_norm` -- a differentiable estimate of its operator norm for certified training (power
  iteration from a persistent vector, :meth:`Op.power_start`), never a certificate.

An operation is built *frozen* (the default: float64 copies of the parameters, for sound certificates) or *live*
(``live=True``: the model's own parameter tensors in their dtype and device, nothing detached, so every rule is
differentiable in the weights and serves certified training).

Rules of an affine operation (:class:`~.affine.AffineOp`, ``x -> lin(x) + offset``) are written once in
:mod:`~art_jacreg.certify.ops.affine` from its linear map, its adjoint and the entry-wise absolute value and square
of its matrix. Rules of a piecewise-linear operation (:class:`PiecewiseOp`) use sound bounds
``lower <= input <= upper`` over the input set.
"""

from __future__ import annotations

import torch

from art_jacreg.certify._dtype import Shape
from art_jacreg.certify.ops.patch_geometry import Pair, PatchGeometry

__all__ = ["Op", "PiecewiseOp", "weighted_sum", "dual_norm"]

Tensors = tuple[torch.Tensor, torch.Tensor]
Relaxation = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # lower slope, upper slope, upper intercept
Scalar = float | torch.Tensor  # a norm: a float bound, or a differentiable training estimate
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
    live: bool = False  # built on the model's own parameters (differentiable), not on float64 copies

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

    def elementwise_relaxation(self, lower: torch.Tensor, upper: torch.Tensor) -> Relaxation | None:
        """The linear relaxation as maps on the input, for operations that act unit by unit (ReLU).

        :param lower: Lower bounds of the input ``(B, *in_shape)``.
        :param upper: Upper bounds.
        :return: ``(lower_slope, upper_slope, upper_intercept)`` with ``lower_slope z <= op(z) <= upper_slope z +
            upper_intercept`` unit by unit, or ``None`` (the default) when the operation is not element-wise.
        """
        return None

    def patch_absorbs_elementwise(self) -> bool:
        """Whether :meth:`patch_backward_after` can apply the element-wise relaxation of the operation before this
        one together with its own patch rule (``False`` by default).
        """
        return False

    def patch_backward_after(
        self,
        a: torch.Tensor,
        const: torch.Tensor,
        geometry: PatchGeometry,
        lower: torch.Tensor,
        upper: torch.Tensor,
        relaxation: Relaxation,
    ) -> tuple[torch.Tensor, torch.Tensor, PatchGeometry]:
        """:meth:`patch_backward`, then the element-wise relaxation of the operation before this one, in one rule
        (only where :meth:`patch_absorbs_elementwise`): the same numbers as the two rules one after the other.

        :param a: Patch rows ``(B, R, C_out, *geometry.size)``.
        :param const: Constants ``(B, R)``.
        :param geometry: Where the patches lie on the output.
        :param lower: Lower bounds of this operation's input ``(B, *in_shape)``.
        :param upper: Upper bounds.
        :param relaxation: :meth:`elementwise_relaxation` of the operation before, on its input.
        :return: ``(a', const', geometry')`` on the input of the operation before.
        """
        raise NotImplementedError(f"no combined patch-form rule for {self!r}")

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
        self, c: torch.Tensor, rho: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, norm: float, lip: Scalar
    ) -> Tensors:
        """Pull ``{g : ||g - c||_{p*} <= rho}`` back through the operation (a set containing every row pulled back).

        :param c: Centres ``(B or 1, M, *out_shape)``.
        :param rho: Radii ``(B or 1, M)``.
        :param lower: Lower bounds of the input.
        :param upper: Upper bounds.
        :param norm: ``2`` or ``inf`` (``p``).
        :param lip: :meth:`operator_norm` of the operation for ``norm`` (a training estimate, a tensor, in training).
        :return: ``(c', rho')``.
        """
        raise NotImplementedError

    def rows_t(self, a: torch.Tensor) -> torch.Tensor:
        """Rows ``(B, M, *out_shape)`` pulled back through the linear part (affine operations only).

        :param a: Rows on the output.
        :return: ``(B, M, *in_shape)``.
        """
        raise NotImplementedError(f"{self!r} is not affine")

    def deviation_rows(self, rho: torch.Tensor, exact: bool, norm: float) -> tuple[torch.Tensor, bool]:
        """Row dual norms of an affine block one operation further (affine operations only; see ``AffineOp``).

        :param rho: Dual norms of the rows on the input.
        :param exact: Whether they are exact.
        :param norm: ``2`` or ``inf``.
        :return: ``(rho', exact')``.
        """
        raise NotImplementedError(f"{self!r} is not affine")

    def operator_norm(self, norm: float, in_scale: torch.Tensor | None = None) -> float:
        """Upper bound on the operator norm ``||.||_p -> ||.||_p`` (the Lipschitz constant), ``1`` by default.

        :param norm: ``2`` or ``inf``.
        :param in_scale: An element-wise input scale merged in front (only if ``absorbs_input_scale``).
        :return: The bound.
        """
        return 1.0

    def power_start(self, generator: torch.Generator) -> torch.Tensor | None:
        """Start vector of the power iteration of :meth:`training_norm` (``None``: the estimate needs none).

        :param generator: Random generator of the start vector.
        :return: A vector ``(1, *in_shape)`` or ``None``.
        """
        return None

    def training_norm(
        self, norm: float, vector: torch.Tensor | None, n_iter: int
    ) -> tuple[torch.Tensor | float, torch.Tensor | None]:
        """Operator-norm estimate for certified training, differentiable in the parameters of a live operation.

        A training estimate, never a certificate (power iteration approaches the spectral norm from below). By
        default the constant :meth:`operator_norm`.

        :param norm: ``2`` or ``inf``.
        :param vector: The persistent power-iteration vector (from :meth:`power_start` or the previous call).
        :param n_iter: Power-iteration steps this call.
        :return: ``(estimate, vector)``: a scalar tensor or a float, and the updated vector (detached).
        """
        return self.operator_norm(norm), vector

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
