"""The flat operation list a :class:`PiecewiseLinearNetwork` is made of, and the network itself.

Every operation acts on a batch ``(N, *in_shape)`` and returns ``(N, *out_shape)``. Affine operations
(:class:`Affine`, :class:`Linear`, :class:`Conv2d`, :class:`Reshape`) are written as ``lin(x) + offset`` and also
expose the adjoint ``lin_t`` and the entry-wise absolute value of their matrix (``abs_lin``, ``abs_lin_t``) and its
square (``sq_lin``), which is all that bound propagation needs. The piecewise-linear operations are :class:`ReLU`
and :class:`MaxPool2d`. Parameters are stored in float64: bounds are computed in float64 so that rounding cannot
make a certificate wrong.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F  # noqa: N812

logger = logging.getLogger(__name__)

__all__ = ["Op", "AffineOp", "Affine", "Linear", "Conv2d", "Reshape", "ReLU", "MaxPool2d", "PiecewiseLinearNetwork"]

DTYPE = torch.float64
Shape = tuple[int, ...]


class Op:
    """Base class of an operation on a batch of per-sample tensors of shape ``in_shape``.

    :param in_shape: Per-sample input shape.
    :param out_shape: Per-sample output shape.
    """

    affine: bool = False

    def __init__(self, in_shape: Shape, out_shape: Shape) -> None:
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operation.

        :param x: Batch ``(N, *in_shape)``.
        :return: Batch ``(N, *out_shape)``.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_shape} -> {self.out_shape})"


class AffineOp(Op):
    """An affine operation ``x -> lin(x) + offset``."""

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


class Affine(AffineOp):
    """Element-wise affine map ``x * scale + shift`` (preprocessing, BatchNorm in eval mode, scalar arithmetic).

    :param scale: Tensor broadcastable to ``shape``.
    :param shift: Tensor broadcastable to ``shape``.
    :param shape: Per-sample shape (input and output).
    """

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, shape: Shape) -> None:
        super().__init__(shape, shape)
        self.scale = torch.broadcast_to(torch.as_tensor(scale, dtype=DTYPE), self.in_shape).clone()
        self.abs_scale = self.scale.abs()
        self._offset = torch.broadcast_to(torch.as_tensor(shift, dtype=DTYPE), self.in_shape).clone()

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


class Linear(AffineOp):
    """Fully connected layer ``x W^T + b`` on flat features.

    :param weight: ``(out, in)``.
    :param bias: ``(out,)`` or ``None``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        weight = weight.detach().to(DTYPE).clone()
        super().__init__((weight.shape[1],), (weight.shape[0],))
        self.weight, self.abs_weight = weight, weight.abs()
        self._offset = torch.zeros(weight.shape[0], dtype=DTYPE) if bias is None else bias.detach().to(DTYPE).clone()

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


class Conv2d(AffineOp):
    """2-D convolution with zero padding (AvgPool is represented as a depthwise one).

    :param weight: ``(C_out, C_in / groups, kh, kw)``.
    :param bias: ``(C_out,)`` or ``None``.
    :param in_shape: ``(C_in, H, W)``.
    :param stride: ``(sh, sw)``.
    :param padding: ``(ph, pw)``.
    :param dilation: ``(dh, dw)``.
    :param groups: Number of groups.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        in_shape: Shape,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
    ) -> None:
        weight = weight.detach().to(DTYPE).clone()
        self.weight, self.abs_weight = weight, weight.abs()
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups
        out = self._conv(torch.zeros((1, *in_shape), dtype=DTYPE), weight)
        super().__init__(in_shape, out.shape[1:])
        b = torch.zeros(weight.shape[0], dtype=DTYPE) if bias is None else bias.detach().to(DTYPE)
        self._offset = b.reshape(-1, 1, 1).expand(self.out_shape).clone()

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def _conv_t(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        size = (y.shape[0], *self.in_shape)
        return torch.nn.grad.conv2d_input(size, weight, y, self.stride, self.padding, self.dilation, self.groups)

    def lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv(x, self.weight)

    def lin_t(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv_t(y, self.weight)

    def abs_lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv(x, self.abs_weight)

    def abs_lin_t(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv_t(y, self.abs_weight)

    def sq_lin(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self._conv(x, self.weight.square())


class Reshape(AffineOp):
    """Per-sample reshape (Flatten, view, reshape) keeping the batch dimension.

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


class ReLU(Op):
    """Rectified linear unit.

    :param shape: Per-sample shape.
    """

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape, shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return torch.relu(x)


class MaxPool2d(Op):
    """2-D max pooling (padding counts as ``-inf``, floor mode).

    :param in_shape: ``(C, H, W)``.
    :param kernel_size: ``(kh, kw)``.
    :param stride: ``(sh, sw)``.
    :param padding: ``(ph, pw)``.
    :param dilation: ``(dh, dw)``.
    """

    def __init__(
        self,
        in_shape: Shape,
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
    ) -> None:
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        out = self.forward(torch.zeros((1, *in_shape), dtype=DTYPE))
        super().__init__(in_shape, out.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation)

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """The pooling windows of ``x``: ``(N, C, k, L)`` with ``k = kh * kw`` and ``L`` output positions.

        :param x: Batch ``(N, C, H, W)``.
        :return: The windows, padded positions equal to ``-inf``.
        """
        ph, pw = self.padding
        xp = F.pad(x, (pw, pw, ph, ph), value=-math.inf) if ph or pw else x
        cols = F.unfold(xp, self.kernel_size, dilation=self.dilation, stride=self.stride)
        return cols.reshape(x.shape[0], self.in_shape[0], -1, cols.shape[-1])

    def fold(self, cols: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`windows`: sum window entries ``(N, C, k, L)`` back onto the input ``(N, C, H, W)``.

        :param cols: Window values.
        :return: Input-shaped sums (padded positions dropped).
        """
        c, h, w = self.in_shape
        ph, pw = self.padding
        n = cols.shape[0]
        out = F.fold(
            cols.reshape(n, -1, cols.shape[-1]),
            (h + 2 * ph, w + 2 * pw),
            self.kernel_size,
            dilation=self.dilation,
            stride=self.stride,
        )
        return out[:, :, ph : ph + h, pw : pw + w]


class PiecewiseLinearNetwork:
    """A chain of supported operations computing a classifier's logits from its raw input.

    Built by :func:`~art_jacreg.certify.build_network`; evaluation-mode semantics (BatchNorm folded with its
    running statistics, Dropout removed), preprocessing included as the first :class:`Affine` operation.

    :param ops: The operations, in order.
    :param input_shape: Per-sample raw input shape.
    """

    def __init__(self, ops: list[Op], input_shape: Shape) -> None:
        self.ops = list(ops)
        self.input_shape = tuple(int(s) for s in input_shape)
        shape = self.input_shape
        for op in self.ops:
            if op.in_shape != shape:
                raise ValueError(f"Operation {op!r} expects input shape {op.in_shape}, got {shape}.")
            shape = op.out_shape
        if len(shape) != 1:
            raise ValueError(f"The network must output flat logits (B, K), got per-sample shape {shape}.")
        self.num_classes = shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the logits (in float64).

        :param x: Raw inputs ``(B, *input_shape)``.
        :return: Logits ``(B, K)``, float64.
        """
        h = x.to(DTYPE)
        for op in self.ops:
            h = op.forward(h)
        return h

    def __repr__(self) -> str:
        body = ",\n  ".join(repr(op) for op in self.ops)
        return f"PiecewiseLinearNetwork(input_shape={self.input_shape}, ops=[\n  {body}\n])"
