"""A chain model (``nn.Sequential``) read as operations for certified training (pure torch, no ART).

:class:`ChainOps` lists the operations of a chain of Conv2d, Linear, ReLU, MaxPool2d and Flatten layers (Dropout and
Identity skipped) behind ART-style ``(mean, std)`` preprocessing, and gives their linear parts, adjoints and
operator-norm estimates (power iteration with persistent vectors, differentiable in the weights).
:class:`~art_jacreg.certify.objectives.CertifiedMargins` builds the training bounds on it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from art_jacreg.certify._common import validate_norm
from art_jacreg.certify.graph import UnsupportedOperationError

__all__ = ["ChainOps"]

_SKIP = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten)


def _flatten_modules(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, nn.Sequential):
        return [m for child in model for m in _flatten_modules(child)]
    return [model]


class ChainOps:
    """A chain model read as operations: their linear parts, adjoints and operator-norm estimates.

    :param model: ``nn.Sequential`` of supported layers; its parameters are read, never modified.
    :param input_shape: Raw per-sample input shape, e.g. ``(1, 28, 28)``.
    :param preprocessing: ``None`` or ART's ``(mean, std)`` (scalars or broadcastable arrays): the model sees
        ``(x - mean) / std``; ``eps`` stays in raw input units.
    :param clip_values: ``None`` or the ``(min, max)`` box the attacker stays in.
    :param seed: Seed of the power-iteration start vectors.
    :raises UnsupportedOperationError: For a layer the bounds do not support.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        preprocessing: tuple[Any, Any] | None = None,
        clip_values: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self.model, self.input_shape, self.clip_values = model, tuple(int(s) for s in input_shape), clip_values
        param = next(model.parameters())
        dtype, device = param.dtype, param.device
        mean, std = (0.0, 1.0) if preprocessing is None else preprocessing
        self.scale = (1.0 / torch.as_tensor(std, dtype=dtype, device=device)).expand(self.input_shape).clone()
        self.shift = (-torch.as_tensor(mean, dtype=dtype, device=device) * self.scale).expand(self.input_shape).clone()
        self.ops: list[tuple[str, nn.Module | None, tuple[int, ...], tuple[int, ...]]] = []
        gen = torch.Generator().manual_seed(seed)
        self._u: dict[int, torch.Tensor] = {}
        h = torch.zeros((1, *self.input_shape), dtype=dtype, device=device)
        with torch.no_grad():
            for mod in _flatten_modules(model):
                if isinstance(mod, _SKIP):
                    if isinstance(mod, nn.Flatten):
                        self.ops.append(("flatten", None, tuple(h.shape[1:]), (math.prod(h.shape[1:]),)))
                        h = h.flatten(1)
                    continue
                if isinstance(mod, nn.Linear) and h.ndim > 2:  # an implicit flatten before a Linear
                    self.ops.append(("flatten", None, tuple(h.shape[1:]), (math.prod(h.shape[1:]),)))
                    h = h.flatten(1)
                kind = self._kind(mod)
                out = mod(h)
                if kind in ("linear", "conv"):
                    self._u[len(self.ops)] = torch.randn(h.shape, generator=gen, dtype=dtype).to(device)
                self.ops.append((kind, mod, tuple(h.shape[1:]), tuple(out.shape[1:])))
                h = out
        if h.ndim != 2:
            raise UnsupportedOperationError("the model must output flat logits (B, K)")
        self.num_classes = h.shape[1]
        nonlin = [i for i, (k, *_) in enumerate(self.ops) if k in ("relu", "maxpool")]
        self.tail = nonlin[-1] + 1 if nonlin else 0

    @staticmethod
    def _kind(mod: nn.Module) -> str:
        if isinstance(mod, nn.Linear):
            return "linear"
        if isinstance(mod, nn.Conv2d) and mod.padding_mode == "zeros" and not isinstance(mod.padding, str):
            return "conv"
        if isinstance(mod, nn.ReLU):
            return "relu"
        if isinstance(mod, nn.MaxPool2d) and not mod.ceil_mode:
            return "maxpool"
        raise UnsupportedOperationError(f"unsupported layer for certified training: {type(mod).__name__}")

    # ---------------------------------------------------------------- linear algebra of one operation

    def _module(self, i: int) -> nn.Module:
        """The layer of operation ``i``; reshapes (``flatten``) have none."""
        kind, mod, _, _ = self.ops[i]
        if mod is None:
            raise ValueError(f"operation {i} ({kind!r}) has no layer")
        return mod

    def _affine(self, i: int) -> nn.Linear | nn.Conv2d:
        """The Linear or Conv2d layer of operation ``i``."""
        mod = self.ops[i][1]
        if not isinstance(mod, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"operation {i} ({self.ops[i][0]!r}) is not a Linear or Conv2d layer")
        return mod

    def _weight(self, i: int) -> torch.Tensor:
        """Weight of the Linear or Conv2d layer of operation ``i``."""
        return self._affine(i).weight

    @staticmethod
    def _conv_args(conv: nn.Conv2d) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]:
        """``(stride, padding, dilation, groups)`` of a Conv2d with numeric padding (checked by :meth:`_kind`)."""
        if isinstance(conv.padding, str):
            raise UnsupportedOperationError(f"Conv2d with padding={conv.padding!r} is not supported")
        return conv.stride, conv.padding, conv.dilation, conv.groups

    def _lin(self, i: int, h: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Linear part of operation ``i`` (no bias), optionally with another weight (``|W|``, ``W**2``)."""
        kind, _, _, out = self.ops[i]
        if kind == "flatten":
            return h.reshape(h.shape[0], *out)
        mod = self._affine(i)
        w = mod.weight if weight is None else weight
        if isinstance(mod, nn.Linear):
            return h @ w.T
        stride, padding, dilation, groups = self._conv_args(mod)
        return F.conv2d(h, w, None, stride, padding, dilation, groups)

    def _lin_t(self, i: int, g: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Adjoint of :meth:`_lin` on a batch ``(N, *out_shape)``."""
        kind, _, inp, _ = self.ops[i]
        if kind == "flatten":
            return g.reshape(g.shape[0], *inp)
        mod = self._affine(i)
        w = mod.weight if weight is None else weight
        if isinstance(mod, nn.Linear):
            return g @ w
        size = [g.shape[0], *inp]
        stride, padding, dilation, groups = self._conv_args(mod)
        return torch.nn.grad.conv2d_input(size, w, g, stride, padding, dilation, groups)

    def _forward(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return self._module(i)(h) if self.ops[i][0] != "flatten" else h.flatten(1)

    # ---------------------------------------------------------------- layer norms

    def layer_norms(self, norm: float = 2.0, n_iter: int = 1) -> list[torch.Tensor]:
        """Operator-norm estimates of every operation (differentiable in the weights); preprocessing not included.

        l2: power iteration on ``W^T W`` from the persistent vectors (updated ``n_iter`` times, detached), then
        ``||W u||``; a lower estimate of the largest singular value that converges to it. l-inf: the exact
        ``inf -> inf`` norm (maximum absolute row sum). MaxPool: ``sqrt`` of the largest window overlap (l2), ReLU
        and reshapes ``1``.

        :param norm: ``2`` or ``inf``.
        :param n_iter: Power-iteration steps this call.
        :return: One scalar tensor per operation.
        """
        norm = validate_norm(norm)
        dtype, device = self.scale.dtype, self.scale.device
        out = []
        for i, (kind, mod, inp, _) in enumerate(self.ops):
            if kind in ("linear", "conv") and norm == 2:
                u = self._u[i]
                with torch.no_grad():
                    for _ in range(n_iter):
                        u = self._lin_t(i, self._lin(i, u))
                        u = u / u.norm().clamp(min=1e-30)
                self._u[i] = u
                out.append(self._lin(i, u).norm())
            elif kind in ("linear", "conv"):
                out.append(self._lin(i, torch.ones((1, *inp), dtype=dtype, device=device), self._weight(i).abs()).max())
            elif kind == "maxpool" and norm == 2:
                if not isinstance(mod, nn.MaxPool2d):
                    raise TypeError(f"operation {i} (maxpool) holds {type(mod).__name__}, not MaxPool2d")
                out.append(torch.tensor(math.sqrt(_overlap(mod, inp)), dtype=dtype, device=device))
            else:
                out.append(torch.ones((), dtype=dtype, device=device))
        return out

    def _pull(self, i: int, a: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        b, m = a.shape[:2]
        _, _, inp, out = self.ops[i]
        return self._lin_t(i, a.reshape(b * m, *out), weight).reshape(b, m, *inp)

    def _prefix(self, norms: list[torch.Tensor], stop: int) -> torch.Tensor:
        """Lipschitz estimate of ``x -> h_stop`` (preprocessing scale included)."""
        total = self.scale.abs().max()
        for n in norms[:stop]:
            total = total * n
        return total


def _dot(a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``sum_features a * h`` for ``a`` ``(B, M, *shape)`` and ``h`` ``(B, *shape)``."""
    return torch.bmm(a.flatten(2), h.flatten(1)[:, :, None])[:, :, 0]


def _overlap(mod: nn.MaxPool2d, inp: tuple[int, ...]) -> int:
    """Largest number of pooling windows one input belongs to."""
    if mod.dilation not in (1, (1, 1)):
        raise UnsupportedOperationError("MaxPool2d with dilation is not supported by certified training")
    with torch.enable_grad():
        ones = torch.ones((1, *inp), requires_grad=True)
        out = F.avg_pool2d(ones, mod.kernel_size, mod.stride, mod.padding, divisor_override=1)
        grad = torch.autograd.grad(out.sum(), ones)[0]
    return int(round(float(grad.max())))
