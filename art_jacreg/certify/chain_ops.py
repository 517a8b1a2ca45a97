"""A model traced once for certified training: its live network at every step and the operations' training norms.

:class:`ChainOps` traces a model (a chain of supported operations, see :mod:`art_jacreg.certify.convert`) behind
ART-style ``(mean, std)`` preprocessing once, into a :class:`~art_jacreg.certify.trace.NetworkPlan`, and builds from
it, whenever asked, a :class:`~art_jacreg.certify.network.LiveNetwork`: the certifier's own operation classes on the
model's own parameters, so that every rule is differentiable and no network goes stale after an optimizer step. It
holds the persistent power-iteration vectors of the operations' training norm estimates
(:meth:`~art_jacreg.certify.ops.base.Op.training_norm`). No linear algebra of its own: the rules are the operations'.
:class:`~art_jacreg.certify.objectives.CertifiedMargins` builds the training bounds on it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from art_jacreg._validate import validate_norm
from art_jacreg.certify.lipschitz import tail_start
from art_jacreg.certify.network import LiveNetwork
from art_jacreg.certify.ops.base import Op
from art_jacreg.certify.trace import trace_plan

__all__ = ["ChainOps"]


class ChainOps:
    """A chain model traced once; its live network and the training estimates of its operations' norms.

    :param model: A chain of supported operations (e.g. an ``nn.Sequential`` of Conv2d, Linear, ReLU, MaxPool2d,
        AvgPool2d, Flatten; Dropout and Identity skipped; no BatchNorm); its parameters are read, never modified.
    :param input_shape: Raw per-sample input shape, e.g. ``(1, 28, 28)``.
    :param preprocessing: ``None`` or ART's ``(mean, std)`` (scalars or broadcastable arrays): the model sees
        ``(x - mean) / std``; ``eps`` stays in raw input units.
    :param clip_values: ``None`` or the ``(min, max)`` box the attacker stays in.
    :param seed: Seed of the power-iteration start vectors.
    :raises UnsupportedOperationError: For an operation the bounds do not support.
    :raises StopIteration: For a model without parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        preprocessing: tuple[Any, Any] | None = None,
        clip_values: tuple[float, float] | None = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        param = next(model.parameters())
        self.model, self.input_shape, self.clip_values = model, tuple(int(s) for s in input_shape), clip_values
        self.plan = trace_plan(model, self.input_shape, preprocessing)
        net = self.network()
        self.num_classes = net.num_classes
        gen = torch.Generator().manual_seed(seed)
        self._vectors = [op.power_start(gen) for op in net.ops]
        pre = self.plan.preprocessing
        ones = torch.ones(self.input_shape, dtype=torch.float64)
        scale, shift = (ones, 0 * ones) if pre is None else (pre.scale, pre.offset)
        #: The preprocessing ``x -> x * scale + shift`` in the model's dtype (the model is called on its output).
        self.scale = scale.to(param.device, param.dtype)
        self.shift = shift.to(param.device, param.dtype)

    def network(self) -> LiveNetwork:
        """The live network on the model's current parameters (built from the plan, no tracing).

        :return: A :class:`~art_jacreg.certify.network.LiveNetwork`.
        """
        return self.plan.build_live(self.model)

    @property
    def ops(self) -> tuple[Op, ...]:
        """The operations of the live network (preprocessing first, if any)."""
        return self.network().ops

    @property
    def tail(self) -> int:
        """Index of the first operation of the final affine block (after the last ReLU/MaxPool)."""
        return tail_start(self.network())

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input ``(x - mean) / std`` for raw inputs ``x``.

        :param x: Raw inputs ``(B, *input_shape)``.
        :return: Preprocessed inputs.
        """
        return x * self.scale.to(x.device) + self.shift.to(x.device)

    def layer_norms(self, norm: float = 2.0, n_iter: int = 1, net: LiveNetwork | None = None) -> list[Any]:
        """Operator-norm estimates of every operation (:meth:`~art_jacreg.certify.ops.base.Op.training_norm`).

        l2: power iteration on ``W^T W`` from the persistent vectors (updated ``n_iter`` times, detached), then
        ``||W u||``, differentiable; a lower estimate of the largest singular value that converges to it. l-inf: the
        exact maximum absolute row sum. Preprocessing: ``max |1 / std|``; MaxPool: ``sqrt`` of the largest window
        overlap (l2); ReLU and reshapes ``1``. Training estimates, never certificates.

        :param norm: ``2`` or ``inf``.
        :param n_iter: Power-iteration steps this call.
        :param net: The live network to use (default: built now).
        :return: One scalar tensor or float per operation.
        """
        norm = validate_norm(norm)
        net = self.network() if net is None else net
        out = []
        for i, op in enumerate(net.ops):
            value, self._vectors[i] = op.training_norm(norm, self._vectors[i], n_iter)
            out.append(value)
        return out
