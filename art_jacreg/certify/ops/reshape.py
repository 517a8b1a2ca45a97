"""Per-sample reshape: Flatten, Unflatten, ``view``, ``reshape``."""

from __future__ import annotations

import math

import torch

from art_jacreg.certify._dtype import DTYPE, Shape
from art_jacreg.certify.ops.affine import AffineOp

__all__ = ["Reshape"]


class Reshape(AffineOp):
    """Per-sample reshape keeping the batch dimension: a permutation-free identity map (operator norm ``1``).

    :param in_shape: Per-sample input shape.
    :param out_shape: Per-sample output shape (same number of elements).
    """

    def __init__(self, in_shape: Shape, out_shape: Shape) -> None:
        super().__init__(in_shape, out_shape)
        if math.prod(self.in_shape) != math.prod(self.out_shape):
            raise ValueError(f"Reshape from {self.in_shape} to {self.out_shape} changes the number of elements.")
        self._offset = torch.zeros(self.out_shape, dtype=DTYPE)

    def lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.reshape(x.shape[0], *self.out_shape)

    def lin_t(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return y.reshape(y.shape[0], *self.in_shape)

    abs_lin = lin
    abs_lin_t = lin_t
    sq_lin = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.lin(x)

    def relax_backward(  # noqa: D102
        self, a: torch.Tensor, const: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rows_t(a), const  # no offset (and none in another dtype for a live network)
