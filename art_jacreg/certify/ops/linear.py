"""Fully connected layer on flat features."""

from __future__ import annotations

import torch

from art_jacreg.certify._dtype import DTYPE
from art_jacreg.certify.ops.affine import AffineOp

__all__ = ["Linear"]


class Linear(AffineOp):
    """Fully connected layer ``x W^T + b``.

    Operator norm: :meth:`~art_jacreg.certify.ops.base.AffineOp.spectral_upper` (exact singular value of ``W``,
    with a merged element-wise input scale) for l2, the maximum absolute row sum for l-inf.

    :param weight: ``(out, in)``.
    :param bias: ``(out,)`` or ``None``.
    :param live: Use ``weight`` and ``bias`` themselves (dtype, device, gradient) instead of float64 copies.
    """

    mixes = True
    absorbs_input_scale = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, live: bool = False) -> None:
        if not live:
            weight = weight.detach().to(DTYPE).clone()
            bias = None if bias is None else bias.detach().to(DTYPE).clone()
        super().__init__((weight.shape[1],), (weight.shape[0],))
        self.live = live
        self.weight, self._abs_weight = weight, None if live else weight.abs()
        self._offset = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device) if bias is None else bias

    @property
    def abs_weight(self) -> torch.Tensor:
        """``|W|``: computed once for a frozen operation, at every use for a live one (its gradient follows)."""
        return self.weight.abs() if self._abs_weight is None else self._abs_weight

    def lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x @ self.weight.T

    def lin_t(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return y @ self.weight

    def abs_lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x @ self.abs_weight.T

    def abs_lin_t(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return y @ self.abs_weight

    def sq_lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x @ self.weight.square().T

    def explicit_matrix(self, in_scale: torch.Tensor | None) -> torch.Tensor:  # noqa: D102
        return self.weight if in_scale is None else self.weight * in_scale.reshape(1, -1)

    def operator_norm(self, norm: float, in_scale: torch.Tensor | None = None) -> float:  # noqa: D102
        return self.mixing_norm(norm, in_scale)

    def then_elementwise(self, scale: torch.Tensor, shift: torch.Tensor) -> Linear:  # noqa: D102
        return Linear(self.weight * scale[:, None], self.offset * scale + shift, live=self.live)
