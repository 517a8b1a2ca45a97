"""Turn a torch model into a :class:`~art_jacreg.certify.ops.PiecewiseLinearNetwork` by tracing it with torch.fx.

The model is deep-copied and put in evaluation mode before tracing, so the caller's module (its parameters, buffers,
mode and hooks) is never touched. Only chains are supported: every operation reads the output of the previous one.
Supported: Linear, Conv2d (zero padding), ReLU (module, ``F.relu``, ``torch.relu``, ``x.relu()``), MaxPool2d,
AvgPool2d, Flatten / view / reshape, BatchNorm1d/2d (folded with running statistics), Dropout and Identity
(removed), arithmetic with a Python scalar (``x * 2``, ``x - 0.5``, ...). Anything else raises
:class:`UnsupportedOperationError` naming the operation and the graph node.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from art_jacreg.certify.ops import (
    DTYPE,
    Affine,
    AffineOp,
    Conv2d,
    Linear,
    MaxPool2d,
    Op,
    PiecewiseLinearNetwork,
    ReLU,
    Reshape,
)

logger = logging.getLogger(__name__)

__all__ = ["UnsupportedOperationError", "build_network"]


class UnsupportedOperationError(TypeError):
    """The model contains an operation (or a graph shape, e.g. a residual branch) the certifiers do not support."""


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_}
_FLATTEN_FUNCS = {torch.flatten, torch.reshape}
_DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout}
_SHAPE_METHODS = {"size", "dim"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "unflatten"}
_ARITH = {operator.mul, operator.add, operator.sub, operator.truediv, torch.mul, torch.add, torch.sub, torch.div}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, numbers.Integral) else (int(v[0]), int(v[1]))


def _target_name(node: fx.Node, root: nn.Module) -> str:
    """Human-readable name of what ``node`` calls, e.g. ``torch.sigmoid`` or ``torch.nn.Sigmoid``."""
    if node.op == "call_module":
        mod = root.get_submodule(node.target)
        cls = type(mod)
        module = cls.__module__
        if module.startswith("torch.nn.modules"):
            module = "torch.nn"
        return f"{module}.{cls.__qualname__}"
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    name = getattr(target, "__name__", repr(target))
    module = getattr(target, "__module__", None) or ""
    if module in ("_operator", "operator"):
        module = "operator"
    elif not module and hasattr(torch, name):
        module = "torch"
    return f"{module}.{name}" if module else name


def _unsupported(node: fx.Node, root: nn.Module, why: str = "") -> UnsupportedOperationError:
    where = f" (module '{node.target}')" if node.op == "call_module" else ""
    msg = f"unsupported operation: {node.op} {_target_name(node, root)}{where} at node '{node.name}'"
    return UnsupportedOperationError(msg + (f" ({why})" if why else ""))


def _bind(node: fx.Node, names: Sequence[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Bind a functional call's positional and keyword arguments to parameter names."""
    out = dict(defaults)
    out.update(dict(zip(names, node.args)))
    out.update(node.kwargs)
    return out


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _preprocessing_op(preprocessing: Any, input_shape: tuple[int, ...]) -> Affine | None:
    """The affine front end ``x -> (x - mean) / std``."""
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

    ops: list[Op] = [] if pre is None else [pre]
    ops += _convert(gm, input_shape)
    net = PiecewiseLinearNetwork(_simplify(ops), input_shape)
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
    return net


def _convert(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> list[Op]:
    """Walk the traced graph, which must be a chain, converting each node."""
    ops: list[Op] = []
    current: fx.Node | None = None
    meta_nodes: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise UnsupportedOperationError(f"unsupported model: more than one input (node '{node.name}')")
            current = node
            continue
        data_args = [a for a in node.all_input_nodes if a not in meta_nodes]
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node) or out is not current:
                raise UnsupportedOperationError(
                    "unsupported model: the output must be the single logits tensor of a chain of operations"
                )
            break
        if _shape(node) is None:  # a shape query such as x.size(0) or x.shape[0]
            ok = (node.op == "call_method" and node.target in _SHAPE_METHODS) or (
                node.op == "call_function" and node.target in (getattr, operator.getitem)
            )
            if not ok:
                raise _unsupported(node, gm, "produces a non-tensor value")
            meta_nodes.add(node)
            continue
        if node.op == "get_attr":
            raise _unsupported(node, gm, "tensor constants/parameters used outside a supported layer")
        if len(data_args) != 1:
            raise _unsupported(
                node, gm, f"combines {len(data_args)} tensors; branching or residual graphs are not supported"
            )
        if data_args[0] is not current:
            raise _unsupported(
                node, gm, f"reads '{data_args[0].name}', not the previous operation; only chains are supported"
            )
        in_shape, out_shape = _shape(current)[1:], _shape(node)[1:]
        new = _convert_node(node, gm, in_shape, out_shape)
        ops.extend(new)
        current = node
    return ops


def _convert_node(node: fx.Node, gm: fx.GraphModule, in_shape: tuple, out_shape: tuple) -> list[Op]:
    """Operations equivalent to one graph node (possibly none)."""
    if node.op == "call_module":
        return _convert_module(node, gm, gm.get_submodule(node.target), in_shape, out_shape)
    target = node.target
    if node.op == "call_method":
        if target in ("relu", "relu_"):
            return [ReLU(in_shape)]
        if target in _RESHAPE_METHODS:
            return _reshape(node, gm, in_shape, out_shape)
        raise _unsupported(node, gm)
    if node.op != "call_function":
        raise _unsupported(node, gm)
    if target in _RELU_FUNCS:
        return [ReLU(in_shape)]
    if target in _FLATTEN_FUNCS:
        return _reshape(node, gm, in_shape, out_shape)
    if target in _DROPOUT_FUNCS:
        args = _bind(node, ["input", "p", "training", "inplace"], {"p": 0.5, "training": True})
        if args["training"] and args["p"] > 0:
            raise _unsupported(node, gm, "dropout with training=True is random in evaluation mode")
        return []
    if target in (F.max_pool2d, torch.max_pool2d):
        a = _bind(
            node,
            ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
            {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
        )
        return [_maxpool(node, gm, in_shape, out_shape, a)]
    if target is F.avg_pool2d:
        a = _bind(
            node,
            ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"],
            {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None},
        )
        return [_avgpool(node, gm, in_shape, out_shape, a)]
    if target in _ARITH:
        return [_arith(node, gm, in_shape)]
    raise _unsupported(node, gm)


def _check_constant_args(node: fx.Node, gm: fx.GraphModule, args: dict[str, Any]) -> None:
    for key, value in args.items():
        if key != "input" and isinstance(value, fx.Node):
            raise _unsupported(node, gm, f"argument {key!r} is computed at run time")


def _maxpool(node: fx.Node, gm: fx.GraphModule, in_shape: tuple, out_shape: tuple, a: dict[str, Any]) -> Op:
    _check_constant_args(node, gm, a)
    if a["return_indices"]:
        raise _unsupported(node, gm, "return_indices=True")
    if len(in_shape) != 3:
        raise _unsupported(node, gm, f"expects (C, H, W) inputs, got {in_shape}")
    kernel = _pair(a["kernel_size"])
    stride = kernel if a["stride"] is None or a["stride"] == [] else _pair(a["stride"])
    op = MaxPool2d(in_shape, kernel, stride, _pair(a["padding"]), _pair(a["dilation"]))
    if op.out_shape != tuple(out_shape):
        raise _unsupported(node, gm, "ceil_mode=True changes the output size")
    return op


def _avgpool(node: fx.Node, gm: fx.GraphModule, in_shape: tuple, out_shape: tuple, a: dict[str, Any]) -> Op:
    _check_constant_args(node, gm, a)
    if len(in_shape) != 3:
        raise _unsupported(node, gm, f"expects (C, H, W) inputs, got {in_shape}")
    kernel = _pair(a["kernel_size"])
    stride = kernel if a["stride"] is None or a["stride"] == [] else _pair(a["stride"])
    padding = _pair(a["padding"])
    if any(padding) and not a["count_include_pad"] and a["divisor_override"] is None:
        raise _unsupported(node, gm, "count_include_pad=False with padding")
    divisor = a["divisor_override"] or kernel[0] * kernel[1]
    c = in_shape[0]
    weight = torch.full((c, 1, *kernel), 1.0 / divisor, dtype=DTYPE)
    op = Conv2d(weight, None, in_shape, stride, padding, (1, 1), c)
    if op.out_shape != tuple(out_shape):
        raise _unsupported(node, gm, "ceil_mode=True changes the output size")
    return op


def _reshape(node: fx.Node, gm: fx.GraphModule, in_shape: tuple, out_shape: tuple) -> list[Op]:
    full_in, full_out = _shape(node.all_input_nodes[0]), _shape(node)
    if full_out[0] != full_in[0] or math.prod(in_shape) != math.prod(out_shape):
        raise _unsupported(node, gm, "reshapes across the batch dimension")
    return [] if tuple(in_shape) == tuple(out_shape) else [Reshape(in_shape, out_shape)]


def _arith(node: fx.Node, gm: fx.GraphModule, in_shape: tuple) -> Op:
    """``x op c`` or ``c op x`` with a Python number ``c``."""
    if len(node.args) != 2 or node.kwargs:
        raise _unsupported(node, gm)
    a, b = node.args
    data_first = isinstance(a, fx.Node)
    const = b if data_first else a
    if not isinstance(const, numbers.Real) or isinstance(const, bool):
        raise _unsupported(node, gm, "only arithmetic with a Python number is supported")
    c = float(const)
    t = node.target
    if t in (operator.mul, torch.mul):
        scale, shift = c, 0.0
    elif t in (operator.add, torch.add):
        scale, shift = 1.0, c
    elif t in (operator.sub, torch.sub):
        scale, shift = (1.0, -c) if data_first else (-1.0, c)
    elif data_first and c != 0:  # division by a constant
        scale, shift = 1.0 / c, 0.0
    else:
        raise _unsupported(node, gm, "division by the input is not piecewise linear")
    return Affine(torch.tensor(scale), torch.tensor(shift), in_shape)


def _convert_module(node: fx.Node, gm: fx.GraphModule, mod: nn.Module, in_shape: tuple, out_shape: tuple) -> list[Op]:
    if isinstance(mod, _IDENTITY_MODULES):
        return []
    if isinstance(mod, nn.ReLU):
        return [ReLU(in_shape)]
    if isinstance(mod, (nn.Flatten, nn.Unflatten)):
        return _reshape(node, gm, in_shape, out_shape)
    if isinstance(mod, nn.Linear):
        if len(in_shape) != 1:
            raise _unsupported(node, gm, f"Linear on non-flat per-sample input {in_shape}")
        return [Linear(mod.weight, mod.bias)]
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            raise _unsupported(node, gm, f"padding_mode={mod.padding_mode!r} (only 'zeros')")
        padding = mod.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:  # 'same': symmetric only
                total = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
                if any(t % 2 for t in total):
                    raise _unsupported(node, gm, "asymmetric 'same' padding")
                padding = (total[0] // 2, total[1] // 2)
        op = Conv2d(mod.weight, mod.bias, in_shape, mod.stride, _pair(padding), mod.dilation, mod.groups)
        if op.out_shape != tuple(out_shape):
            raise _unsupported(node, gm, "output shape mismatch")
        return [op]
    if isinstance(mod, nn.MaxPool2d):
        a = {k: getattr(mod, k) for k in ("kernel_size", "stride", "padding", "dilation", "return_indices")}
        return [_maxpool(node, gm, in_shape, out_shape, a)]
    if isinstance(mod, nn.AvgPool2d):
        a = {k: getattr(mod, k) for k in ("kernel_size", "stride", "padding", "count_include_pad", "divisor_override")}
        return [_avgpool(node, gm, in_shape, out_shape, a)]
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if mod.running_mean is None or mod.running_var is None:
            raise _unsupported(node, gm, "BatchNorm without running statistics uses batch statistics in eval mode")
        inv = 1.0 / torch.sqrt(mod.running_var.detach().to(DTYPE) + mod.eps)
        scale = inv if mod.weight is None else mod.weight.detach().to(DTYPE) * inv
        shift = -mod.running_mean.detach().to(DTYPE) * scale
        if mod.bias is not None:
            shift = shift + mod.bias.detach().to(DTYPE)
        extra = [1] * (len(in_shape) - 1)
        return [Affine(scale.reshape(-1, *extra), shift.reshape(-1, *extra), in_shape)]
    raise _unsupported(node, gm)


def _simplify(ops: list[Op]) -> list[Op]:
    """Merge consecutive element-wise affines and fold an element-wise affine into the Linear/Conv before it."""
    out: list[Op] = []
    for op in ops:
        prev = out[-1] if out else None
        if isinstance(op, Affine) and isinstance(prev, Affine):
            out[-1] = Affine(prev.scale * op.scale, prev.offset * op.scale + op.offset, op.in_shape)
        elif isinstance(op, Affine) and isinstance(prev, Linear):
            folded = Linear(prev.weight * op.scale[:, None], prev.offset * op.scale + op.offset)
            out[-1] = folded
        elif isinstance(op, Affine) and isinstance(prev, Conv2d) and _per_channel(op):
            s, t = op.scale[:, 0, 0], op.offset[:, 0, 0]
            out[-1] = Conv2d(
                prev.weight * s.reshape(-1, 1, 1, 1),
                prev.offset[:, 0, 0] * s + t,
                prev.in_shape,
                prev.stride,
                prev.padding,
                prev.dilation,
                prev.groups,
            )
        else:
            out.append(op)
    return out


def _per_channel(op: AffineOp) -> bool:
    """Whether an element-wise affine on ``(C, H, W)`` is constant over each channel."""
    if len(op.in_shape) != 3:
        return False
    s, t = op.scale, op.offset
    return bool((s == s[:, :1, :1]).all() and (t == t[:, :1, :1]).all())
