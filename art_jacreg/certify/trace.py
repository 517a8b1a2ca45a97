"""Turn a torch model into a :class:`~art_jacreg.certify.network.PiecewiseLinearNetwork` by tracing it with torch.fx.

The model is deep-copied and put in evaluation mode before tracing, so the caller's module (its parameters, buffers,
mode and hooks) is never touched. Only chains are supported: every operation reads the output of the previous one.
Each node is converted by :mod:`art_jacreg.certify.convert`; consecutive operations are then folded where exact
(an element-wise affine into the operation before it, :meth:`~.ops.base.Op.folded_into`), and the network is checked
against the model on random inputs (the self-check).

The trace is kept as a :class:`NetworkPlan` (the chain's graph nodes with their shapes, and the preprocessing):
:func:`build_network` builds it once into a frozen network (float64 copies); certified training traces once
(:func:`trace_plan`) and builds *live* operations on the model's own parameters from the plan at every step
(:meth:`NetworkPlan.build_live`), cheaply and without tracing again, so its network never goes stale.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from art_jacreg.certify._dtype import DTYPE
from art_jacreg.certify.convert import (
    FROZEN,
    Build,
    UnsupportedOperationError,
    convert_node,
    is_shape_query,
    tensor_shape,
    unsupported,
)
from art_jacreg.certify.network import LiveNetwork, PiecewiseLinearNetwork
from art_jacreg.certify.ops import Affine, Op

logger = logging.getLogger(__name__)

__all__ = ["build_network", "trace_plan", "NetworkPlan"]  # UnsupportedOperationError is documented in convert


def _preprocessing_op(preprocessing: Any, input_shape: tuple[int, ...]) -> Affine | None:
    """The affine front end ``x -> (x - mean) / std`` (frozen, float64)."""
    if preprocessing is None:
        return None
    if not isinstance(preprocessing, (tuple, list)) or len(preprocessing) != 2:
        raise ValueError(f"`preprocessing` must be None or a pair (mean, std), got {preprocessing!r}.")

    def as_tensor(v: Any, name: str) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64))
        if t.ndim == 1 and len(input_shape) > 1 and t.shape[0] == input_shape[0] and t.shape[0] > 1:
            t = t.reshape(-1, *([1] * (len(input_shape) - 1)))  # per-channel values (channels first)
        try:
            torch.broadcast_shapes(t.shape, input_shape)
        except RuntimeError as err:
            raise ValueError(
                f"`preprocessing` {name} of shape {tuple(t.shape)} does not broadcast to the input {input_shape}."
            ) from err
        if not torch.isfinite(t).all():
            raise ValueError(f"`preprocessing` {name} must be finite.")
        return t

    mean, std = as_tensor(preprocessing[0], "mean"), as_tensor(preprocessing[1], "std")
    if (std == 0).any():
        raise ValueError("`preprocessing` std must be non-zero.")
    if bool((mean == 0).all()) and bool((std == 1).all()):
        return None
    return Affine(1.0 / std, -mean / std, input_shape)


class NetworkPlan:
    """A traced chain: its graph nodes with their per-sample shapes, and the preprocessing, ready to be built.

    :param steps: ``(node, in_shape, out_shape)`` of every data node of the chain, in order.
    :param input_shape: Per-sample raw input shape.
    :param preprocessing: The frozen preprocessing operation, or ``None``.
    """

    def __init__(
        self, steps: list[tuple[fx.Node, tuple, tuple]], input_shape: tuple[int, ...], preprocessing: Affine | None
    ) -> None:
        self.steps, self.input_shape, self.preprocessing = steps, input_shape, preprocessing
        # Live operations without parameters (ReLU, MaxPool, reshapes, scalar arithmetic, AvgPool, preprocessing)
        # depend on nothing that training changes: built once per dtype and device and reused by every live build.
        self._constants: dict[tuple[int, Build], list[Op]] = {}
        self._parameter_free: list[bool] | None = None

    def ops(self, root: nn.Module, build: Build = FROZEN) -> list[Op]:
        """The chain's operations, folded, with parameters read from ``root``'s modules.

        :param root: The traced module, or a module with the same submodule names (the model itself).
        :param build: Frozen or live.
        :return: The operations.
        """
        ops: list[Op] = []
        pre = self.preprocessing
        if pre is not None and build.live:
            ops.extend(self._constant(-1, build, lambda: [_live_copy(pre, build)]))
        elif pre is not None:
            ops.append(pre)
        free = self._free(root) if build.live else [False] * len(self.steps)
        for i, (node, in_shape, out_shape) in enumerate(self.steps):
            convert = functools.partial(convert_node, node, root, in_shape, out_shape, build)
            ops.extend(self._constant(i, build, convert) if free[i] else convert())
        return _fold(ops)

    def _constant(self, key: int, build: Build, make: Callable[[], list[Op]]) -> list[Op]:
        """The parameter-free operations of step ``key`` (``-1``: preprocessing) for ``build``, made once."""
        if (key, build) not in self._constants:
            self._constants[(key, build)] = make()
        return self._constants[(key, build)]

    def _free(self, root: nn.Module) -> list[bool]:
        """Per step: whether its operations read no parameter or buffer of ``root``."""
        if self._parameter_free is None:

            def free(node: fx.Node) -> bool:
                if node.op != "call_module":
                    return True
                mod = root.get_submodule(str(node.target))
                return next(iter(mod.parameters()), None) is None and next(iter(mod.buffers()), None) is None

            self._parameter_free = [free(node) for node, _, _ in self.steps]
        return self._parameter_free

    def build_live(self, model: nn.Module) -> LiveNetwork:
        """The network on ``model``'s own parameters, in their dtype and device: every rule differentiable.

        :param model: The traced model (the same module names); its parameters are referenced, never modified.
        :return: A :class:`~art_jacreg.certify.network.LiveNetwork`.
        :raises UnsupportedOperationError: For an operation certified training does not support (BatchNorm).
        """
        param = next(iter(model.parameters()))
        return LiveNetwork(self.ops(model, Build(True, param.dtype, param.device)), self.input_shape)


def _live_copy(pre: Affine, build: Build) -> Affine:
    """The preprocessing operation in the live build's dtype and device."""
    return Affine(
        pre.scale.to(build.device, build.dtype), pre.offset.to(build.device, build.dtype), pre.in_shape, live=True
    )


def build_network(
    model: nn.Module, input_shape: Sequence[int], preprocessing: tuple[Any, Any] | None = None
) -> PiecewiseLinearNetwork:
    """Trace ``model`` (a copy, in evaluation mode) into a :class:`PiecewiseLinearNetwork`.

    :param model: A torch module mapping ``(B, *input_shape)`` to logits ``(B, K)``; not modified.
    :param input_shape: Per-sample raw input shape, e.g. ``(1, 28, 28)``.
    :param preprocessing: Optional ``(mean, std)`` applied before the model as ``(x - mean) / std`` (scalars, arrays
        broadcastable to ``input_shape``, or per-channel 1-D arrays).
    :return: The network, whose ``__call__`` equals ``model.eval()(preprocess(x))`` up to float rounding.
    :raises TypeError: If ``model`` is not an ``nn.Module``.
    :raises UnsupportedOperationError: For an unsupported operation or a non-chain (branching) graph.
    :raises ValueError: For an invalid ``input_shape`` or ``preprocessing``.
    """
    return _trace(model, input_shape, preprocessing)[1]


def trace_plan(
    model: nn.Module, input_shape: Sequence[int], preprocessing: tuple[Any, Any] | None = None
) -> NetworkPlan:
    """Trace ``model`` once (as :func:`build_network`, self-check included) and keep the plan for live builds.

    :param model: A torch module mapping ``(B, *input_shape)`` to logits ``(B, K)``; not modified.
    :param input_shape: Per-sample raw input shape.
    :param preprocessing: Optional ``(mean, std)``, as for :func:`build_network`.
    :return: The :class:`NetworkPlan`.
    :raises TypeError: If ``model`` is not an ``nn.Module``.
    :raises UnsupportedOperationError: For an unsupported operation or a non-chain (branching) graph.
    :raises ValueError: For an invalid ``input_shape`` or ``preprocessing``.
    """
    return _trace(model, input_shape, preprocessing)[0]


def _trace(
    model: nn.Module, input_shape: Sequence[int], preprocessing: tuple[Any, Any] | None
) -> tuple[NetworkPlan, PiecewiseLinearNetwork]:
    """Trace a copy of ``model``, build the frozen network from the plan and self-check it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except TypeError as err:
        raise ValueError(f"`input_shape` must be a sequence of positive ints, got {input_shape!r}.") from err
    if not input_shape or min(input_shape) < 1:
        raise ValueError(f"`input_shape` must be a sequence of positive ints, got {input_shape!r}.")
    pre = _preprocessing_op(preprocessing, input_shape)

    clone = copy.deepcopy(model).cpu().eval()
    for mod in clone.modules():  # the copy carries the user's hooks; drop them so tracing sees the plain model
        mod._forward_hooks.clear()
        mod._forward_pre_hooks.clear()
    try:
        gm = fx.symbolic_trace(clone)
    except Exception as err:  # noqa: BLE001 - any tracing failure means "not a supported static chain"
        raise UnsupportedOperationError(f"unsupported model: torch.fx cannot trace it ({err})") from err
    param = next(iter(clone.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    probe = torch.rand((3, *input_shape), generator=gen, dtype=torch.float64)
    pre_probe = probe if pre is None else pre.forward(probe)
    with torch.no_grad():
        try:
            ShapeProp(gm).propagate(pre_probe.to(dtype))
            expected = gm(pre_probe.to(dtype))
        except Exception as err:  # noqa: BLE001 - report any failure of the model on the declared input shape
            raise ValueError(f"`model` fails on inputs of shape (3, *{input_shape}) (`input_shape`): {err}") from err
    if not isinstance(expected, torch.Tensor):
        raise UnsupportedOperationError("unsupported model: the output must be a single logits tensor")
    expected = expected.to(DTYPE)

    plan = NetworkPlan(_chain_steps(gm), input_shape, pre)
    net = PiecewiseLinearNetwork(plan.ops(gm), input_shape)
    with torch.no_grad():
        got = net(probe)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    atol = tol * (1 + float(expected.abs().max()))
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=tol, atol=atol):
        raise UnsupportedOperationError(
            "unsupported model: the traced operations do not reproduce the model's evaluation-mode output "
            "(is the forward pass random or data-dependent?)"
        )
    logger.debug("built %r", net)
    return plan, net


def _data_nodes(gm: fx.GraphModule) -> list[tuple[fx.Node, list[fx.Node]]]:
    """The graph's nodes with the tensors each reads, leaving out shape queries (``x.size(0)``, ``x.shape[0]``)."""
    steps, meta_nodes = [], set()
    for node in gm.graph.nodes:
        if node.op not in ("placeholder", "output") and tensor_shape(node) is None:
            if not is_shape_query(node):
                raise unsupported(node, gm, "produces a non-tensor value")
            meta_nodes.add(node)
            continue
        steps.append((node, [a for a in node.all_input_nodes if a not in meta_nodes]))
    return steps


def _chain_steps(gm: fx.GraphModule) -> list[tuple[fx.Node, tuple, tuple]]:
    """Walk the traced graph, which must be a chain: its data nodes with their per-sample shapes."""
    steps = _data_nodes(gm)
    for node, data_args in steps:  # name a node that joins branches (torch.cat, a residual sum) before its branches
        if node.op not in ("placeholder", "get_attr", "output") and len(data_args) != 1:
            raise unsupported(
                node, gm, f"combines {len(data_args)} tensors; branching or residual graphs are not supported"
            )
    chain: list[tuple[fx.Node, tuple, tuple]] = []
    current: fx.Node | None = None
    for node, data_args in steps:
        if node.op == "placeholder":
            if current is not None:
                raise UnsupportedOperationError(f"unsupported model: more than one input (node '{node.name}')")
            current = node
            continue
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node) or out is not current:
                raise UnsupportedOperationError(
                    "unsupported model: the output must be the single logits tensor of a chain of operations"
                )
            break
        if node.op == "get_attr":
            raise unsupported(node, gm, "tensor constants/parameters used outside a supported layer")
        if data_args[0] is not current:
            raise unsupported(
                node, gm, f"reads '{data_args[0].name}', not the previous operation; only chains are supported"
            )
        full_in, full_out = tensor_shape(current), tensor_shape(node)
        assert full_in is not None and full_out is not None  # shape queries were left out by _data_nodes
        chain.append((node, full_in[1:], full_out[1:]))
        current = node
    return chain


def _fold(ops: list[Op]) -> list[Op]:
    """Fold each operation into the one before it where the pair is one operation exactly (consecutive element-wise
    affines; an element-wise affine after a Linear, or a per-channel one after a Conv2d).
    """
    out: list[Op] = []
    for op in ops:
        folded = op.folded_into(out[-1]) if out else None
        if folded is None:
            out.append(op)
        else:
            out[-1] = folded
    return out
