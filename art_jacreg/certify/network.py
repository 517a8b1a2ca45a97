"""The chains of operations the engines work on: the immutable :class:`PiecewiseLinearNetwork` of the certifiers
(float64 copies of the parameters) and the :class:`LiveNetwork` of certified training (the model's own parameters);
:class:`OpChain` is what the engines read from either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import torch

from art_jacreg.certify._dtype import DTYPE, Shape

if TYPE_CHECKING:
    from art_jacreg.certify.ops.base import Op

__all__ = ["OpChain", "PiecewiseLinearNetwork", "LiveNetwork"]


class OpChain(Protocol):
    """What the engines read from a network: its operations, per-sample input shape and number of logits."""

    @property
    def ops(self) -> tuple[Op, ...]:
        """The operations, in order."""
        ...

    @property
    def input_shape(self) -> Shape:
        """Per-sample raw input shape."""
        ...

    @property
    def num_classes(self) -> int:
        """Number of logits ``K``."""
        ...


def _check_chain(ops: tuple[Op, ...], input_shape: Shape) -> int:
    """Check that consecutive shapes match and the output is flat logits; return ``K``."""
    shape = input_shape
    for op in ops:
        if op.in_shape != shape:
            raise ValueError(f"Operation {op!r} expects input shape {op.in_shape}, got {shape}.")
        shape = op.out_shape
    if len(shape) != 1:
        raise ValueError(f"The network must output flat logits (B, K), got per-sample shape {shape}.")
    return shape[0]


class PiecewiseLinearNetwork:
    """A chain of supported operations computing a classifier's logits from its raw input.

    Built by :func:`~art_jacreg.certify.build_network`; evaluation-mode semantics (BatchNorm folded with its
    running statistics, Dropout removed), preprocessing included as the first element-wise affine operation.

    The network is immutable: :attr:`ops` is a tuple, the operations hold float64 *copies* of the model's
    parameters taken at construction (changing the model afterwards does not change the network; build a new one),
    and the shapes are read-only. :attr:`lipschitz_cache` therefore memoises values derived from those weights
    (operator-norm bounds of operations and segments) and is keyed on them by construction: a network with other
    weight values is another network with its own, empty cache.

    :param ops: The operations, in order.
    :param input_shape: Per-sample raw input shape.
    :raises ValueError: If consecutive shapes do not match or the output is not flat logits ``(B, K)``.
    """

    __slots__ = ("_ops", "_input_shape", "_num_classes", "_lipschitz_cache")
    _ops: tuple[Op, ...]
    _input_shape: Shape
    _num_classes: int
    _lipschitz_cache: dict[tuple, float]

    def __init__(self, ops: Iterable[Op], input_shape: Shape) -> None:
        ops = tuple(ops)
        input_shape = tuple(int(s) for s in input_shape)
        num_classes = _check_chain(ops, input_shape)
        object.__setattr__(self, "_ops", ops)
        object.__setattr__(self, "_input_shape", input_shape)
        object.__setattr__(self, "_num_classes", num_classes)
        object.__setattr__(self, "_lipschitz_cache", {})

    def __reduce__(self) -> tuple:
        return type(self), (self._ops, self._input_shape)  # copies start with an empty cache

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"PiecewiseLinearNetwork is immutable (cannot set {name!r}); build a new one.")

    @property
    def ops(self) -> tuple[Op, ...]:
        """The operations, in order."""
        return self._ops

    @property
    def input_shape(self) -> Shape:
        """Per-sample raw input shape."""
        return self._input_shape

    @property
    def num_classes(self) -> int:
        """Number of logits ``K``."""
        return self._num_classes

    @property
    def lipschitz_cache(self) -> dict[tuple, float]:
        """Memo of :mod:`~art_jacreg.certify.lipschitz`: operator-norm bounds keyed ``("op", first, i, norm)`` (of
        operation ``i`` with the element-wise affines from ``first`` merged in) and segment bounds keyed
        ``("segment", start, stop, norm)``. Valid for the network's lifetime since its weights never change.
        """
        return self._lipschitz_cache

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the logits (in float64).

        :param x: Raw inputs ``(B, *input_shape)``.
        :return: Logits ``(B, K)``, float64.
        """
        h = x.to(DTYPE)
        for op in self._ops:
            h = op.forward(h)
        return h

    def __repr__(self) -> str:
        body = ",\n  ".join(repr(op) for op in self._ops)
        return f"PiecewiseLinearNetwork(input_shape={self.input_shape}, ops=[\n  {body}\n])"


class LiveNetwork:
    """A chain of *live* operations (built on the model's own parameters, in its dtype and device) for certified
    training: every rule is differentiable in the weights.

    Built per training step from a plan traced once (:func:`~art_jacreg.certify.trace.trace_plan`), so it never goes
    stale; it has no cache (its weights change under it at the next optimizer step) and it is not a
    :class:`PiecewiseLinearNetwork`, so the certifiers refuse it.

    :param ops: The operations, in order.
    :param input_shape: Per-sample raw input shape.
    :raises ValueError: If consecutive shapes do not match or the output is not flat logits ``(B, K)``.
    """

    def __init__(self, ops: Iterable[Op], input_shape: Shape) -> None:
        self.ops = tuple(ops)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = _check_chain(self.ops, self.input_shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the logits in the operations' dtype.

        :param x: Raw inputs ``(B, *input_shape)``.
        :return: Logits ``(B, K)``.
        """
        h = x
        for op in self.ops:
            h = op.forward(h)
        return h

    def __repr__(self) -> str:
        body = ",\n  ".join(repr(op) for op in self.ops)
        return f"LiveNetwork(input_shape={self.input_shape}, ops=[\n  {body}\n])"
