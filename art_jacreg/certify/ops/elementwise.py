"""Element-wise affine map: preprocessing ``(x - mean) / std``, BatchNorm in evaluation mode, scalar arithmetic."""

from __future__ import annotations

import torch

from art_jacreg.certify._dtype import DTYPE, Shape
from art_jacreg.certify.ops.affine import AffineOp
from art_jacreg.certify.ops.base import NORM_SLACK, Op
from art_jacreg.certify.ops.patch_geometry import PatchGeometry

__all__ = ["Affine"]


class Affine(AffineOp):
    """Element-wise affine map ``x * scale + shift``.

    Its rows are exact under every rule (a diagonal matrix); its operator norm is ``max |scale|``, and it is merged
    into the bound of a Linear/Conv2d after it (:attr:`elementwise_scale`) or folded into one before it.

    :param scale: Tensor broadcastable to ``shape``.
    :param shift: Tensor broadcastable to ``shape``.
    :param shape: Per-sample shape (input and output).
    :param live: Use ``scale`` and ``shift`` (tensors) in their dtype and device, with their gradient, instead of
        float64 copies.
    """

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, shape: Shape, live: bool = False) -> None:
        super().__init__(shape, shape)
        self.live = live
        if live:
            self.scale = torch.broadcast_to(scale, self.in_shape)
            self._offset = torch.broadcast_to(shift, self.in_shape)
        else:
            self.scale = torch.broadcast_to(torch.as_tensor(scale, dtype=DTYPE), self.in_shape).clone()
            self._offset = torch.broadcast_to(torch.as_tensor(shift, dtype=DTYPE), self.in_shape).clone()
        self.abs_scale = self.scale.abs()

    @property
    def elementwise_scale(self) -> torch.Tensor:  # noqa: D102
        return self.scale

    def lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x * self.scale

    def lin_t(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return y * self.scale

    def abs_lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x * self.abs_scale

    def abs_lin_t(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return y * self.abs_scale

    def sq_lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x * self.scale.square()

    def operator_norm(self, norm: float, in_scale: torch.Tensor | None = None) -> float:  # noqa: D102
        return float(self.abs_scale.max()) * NORM_SLACK

    def training_norm(  # noqa: D102
        self, norm: float, vector: torch.Tensor | None, n_iter: int
    ) -> tuple[torch.Tensor | float, torch.Tensor | None]:
        return self.abs_scale.max(), vector  # exact for both norms (a diagonal map), differentiable

    def supports_patches(self) -> bool:  # noqa: D102
        return True

    def patch_backward(  # noqa: D102
        self, a: torch.Tensor, const: torch.Tensor, geometry: PatchGeometry, lower: torch.Tensor, upper: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, PatchGeometry]:
        const = self.patch_offset(a, const, geometry)
        return a * geometry.gather(self.scale.expand(self.in_shape)), const, geometry

    def then_elementwise(self, scale: torch.Tensor, shift: torch.Tensor) -> Affine:  # noqa: D102
        return Affine(self.scale * scale, self.offset * scale + shift, self.in_shape, live=self.live)

    def folded_into(self, prev: Op) -> Op | None:  # noqa: D102
        return prev.then_elementwise(self.scale, self.offset)
