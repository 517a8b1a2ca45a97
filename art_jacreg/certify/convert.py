"""One torch.fx graph node (a module call, a function call or a tensor method) -> the equivalent operations.

Supported: Linear, Conv2d (zero padding), ReLU (module, ``F.relu``, ``torch.relu``, ``x.relu()``), MaxPool2d,
AvgPool2d (as a depthwise :class:`~art_jacreg.certify.ops.conv.Conv2d`), Flatten / view / reshape, BatchNorm1d/2d
(an element-wise affine with the running statistics), Dropout and Identity (removed), arithmetic with a Python scalar
(``x * 2``, ``x - 0.5``, ...). Anything else raises :class:`UnsupportedOperationError` naming the operation and the
graph node. Supporting a new operation means one class in :mod:`art_jacreg.certify.ops` and its case here.

A :class:`Build` says how: frozen (float64 copies, for certificates) or live (the model's own parameters, for
certified training; BatchNorm is refused there, since a training-mode BatchNorm uses batch statistics).
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import fx, nn

from art_jacreg.certify._dtype import DTYPE
from art_jacreg.certify.ops import Affine, Conv2d, Linear, MaxPool2d, Op, ReLU, Reshape

__all__ = [
    "Build",
    "FROZEN",
    "UnsupportedOperationError",
    "convert_node",
    "is_shape_query",
    "unsupported",
    "tensor_shape",
]


class UnsupportedOperationError(TypeError):
    """The model contains an operation (or a graph shape, e.g. a residual branch) the certifiers do not support."""


@dataclass(frozen=True)
class Build:
    """How operations are built from a model.

    :param live: ``False``: float64 copies of the parameters (certificates); ``True``: the parameters themselves.
    :param dtype: dtype of the constants a conversion creates (AvgPool kernels, scalar arithmetic) when live.
    :param device: Their device when live.
    """

    live: bool = False
    dtype: torch.dtype = DTYPE
    device: torch.device = torch.device("cpu")

    def constant(self, value: float) -> torch.Tensor:
        """A scalar constant of a conversion (the float32 tensor of before when frozen: certificates unchanged)."""
        return torch.tensor(value, dtype=self.dtype, device=self.device) if self.live else torch.tensor(value)


FROZEN = Build()


_RELU_FUNCS = {F.relu, torch.relu, torch.relu_, F.relu_}
_FLATTEN_FUNCS = {torch.flatten, torch.reshape}
_DROPOUT_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout}
_SHAPE_METHODS = {"size", "dim"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "unflatten"}
_ARITH = {operator.mul, operator.add, operator.sub, operator.truediv, torch.mul, torch.add, torch.sub, torch.div}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, numbers.Integral) else (int(v[0]), int(v[1]))


def _target_name(node: fx.Node, root: nn.Module) -> str:  # root: the traced module or the model (same names)
    """Human-readable name of what ``node`` calls, e.g. ``torch.sigmoid`` or ``torch.nn.Sigmoid``."""
    if node.op == "call_module":
        mod = root.get_submodule(str(node.target))
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


def unsupported(node: fx.Node, root: nn.Module, why: str = "") -> UnsupportedOperationError:
    """The error for ``node`` of ``root``'s graph: its kind, what it calls, the module name and node name, and why."""
    where = f" (module '{node.target}')" if node.op == "call_module" else ""
    msg = f"unsupported operation: {node.op} {_target_name(node, root)}{where} at node '{node.name}'"
    return UnsupportedOperationError(msg + (f" ({why})" if why else ""))


def _bind(node: fx.Node, names: Sequence[str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Bind a functional call's positional and keyword arguments to parameter names."""
    out = dict(defaults)
    out.update(dict(zip(names, node.args)))
    out.update(node.kwargs)
    return out


def tensor_shape(node: fx.Node) -> tuple[int, ...] | None:
    """Shape of the tensor ``node`` produces (from shape propagation), ``None`` for a non-tensor value."""
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def is_shape_query(node: fx.Node) -> bool:
    """Whether ``node`` (whose value is not a tensor) asks for a shape: ``x.size(0)``, ``x.dim()``, ``x.shape[0]``."""
    return (node.op == "call_method" and node.target in _SHAPE_METHODS) or (
        node.op == "call_function" and node.target in (getattr, operator.getitem)
    )


def convert_node(node: fx.Node, gm: nn.Module, in_shape: tuple, out_shape: tuple, build: Build = FROZEN) -> list[Op]:
    """Operations equivalent to one graph node (possibly none).

    :param node: The node.
    :param gm: The module the node's module targets are read from (the traced copy, or the model for a live build).
    :param in_shape: Per-sample input shape.
    :param out_shape: Per-sample output shape.
    :param build: Frozen or live (:class:`Build`).
    :return: The operations.
    """
    if node.op == "call_module":
        return _convert_module(node, gm, gm.get_submodule(str(node.target)), in_shape, out_shape, build)
    target = node.target
    if node.op == "call_method":
        if target in ("relu", "relu_"):
            return [ReLU(in_shape)]
        if target in _RESHAPE_METHODS:
            return _reshape(node, gm, in_shape, out_shape)
        raise unsupported(node, gm)
    if node.op != "call_function":
        raise unsupported(node, gm)
    if target in _RELU_FUNCS:
        return [ReLU(in_shape)]
    if target in _FLATTEN_FUNCS:
        return _reshape(node, gm, in_shape, out_shape)
    if target in _DROPOUT_FUNCS:
        args = _bind(node, ["input", "p", "training", "inplace"], {"p": 0.5, "training": True})
        if args["training"] and args["p"] > 0:
            raise unsupported(node, gm, "dropout with training=True is random in evaluation mode")
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
        return [_avgpool(node, gm, in_shape, out_shape, a, build)]
    if target in _ARITH:
        return [_arith(node, gm, in_shape, build)]
    raise unsupported(node, gm)


def _check_constant_args(node: fx.Node, gm: nn.Module, args: dict[str, Any]) -> None:
    for key, value in args.items():
        if key != "input" and isinstance(value, fx.Node):
            raise unsupported(node, gm, f"argument {key!r} is computed at run time")


def _maxpool(node: fx.Node, gm: nn.Module, in_shape: tuple, out_shape: tuple, a: dict[str, Any]) -> Op:
    _check_constant_args(node, gm, a)
    if a["return_indices"]:
        raise unsupported(node, gm, "return_indices=True")
    if len(in_shape) != 3:
        raise unsupported(node, gm, f"expects (C, H, W) inputs, got {in_shape}")
    kernel = _pair(a["kernel_size"])
    stride = kernel if a["stride"] is None or a["stride"] == [] else _pair(a["stride"])
    op = MaxPool2d(in_shape, kernel, stride, _pair(a["padding"]), _pair(a["dilation"]))
    if op.out_shape != tuple(out_shape):
        raise unsupported(node, gm, "ceil_mode=True changes the output size")
    return op


def _avgpool(node: fx.Node, gm: nn.Module, in_shape: tuple, out_shape: tuple, a: dict[str, Any], build: Build) -> Op:
    _check_constant_args(node, gm, a)
    if len(in_shape) != 3:
        raise unsupported(node, gm, f"expects (C, H, W) inputs, got {in_shape}")
    kernel = _pair(a["kernel_size"])
    stride = kernel if a["stride"] is None or a["stride"] == [] else _pair(a["stride"])
    padding = _pair(a["padding"])
    if any(padding) and not a["count_include_pad"] and a["divisor_override"] is None:
        raise unsupported(node, gm, "count_include_pad=False with padding")
    divisor = a["divisor_override"] or kernel[0] * kernel[1]
    c = in_shape[0]
    dtype, device = (build.dtype, build.device) if build.live else (DTYPE, torch.device("cpu"))
    weight = torch.full((c, 1, *kernel), 1.0 / divisor, dtype=dtype, device=device)
    op = Conv2d(weight, None, in_shape, stride, padding, (1, 1), c, live=build.live)
    if op.out_shape != tuple(out_shape):
        raise unsupported(node, gm, "ceil_mode=True changes the output size")
    return op


def _reshape(node: fx.Node, gm: nn.Module, in_shape: tuple, out_shape: tuple) -> list[Op]:
    full_in, full_out = tensor_shape(node.all_input_nodes[0]), tensor_shape(node)
    assert full_in is not None and full_out is not None  # only tensor-valued nodes are converted
    if full_out[0] != full_in[0] or math.prod(in_shape) != math.prod(out_shape):
        raise unsupported(node, gm, "reshapes across the batch dimension")
    return [] if tuple(in_shape) == tuple(out_shape) else [Reshape(in_shape, out_shape)]


def _arith(node: fx.Node, gm: nn.Module, in_shape: tuple, build: Build) -> Op:
    """``x op c`` or ``c op x`` with a Python number ``c``."""
    if len(node.args) != 2 or node.kwargs:
        raise unsupported(node, gm)
    a, b = node.args
    data_first = isinstance(a, fx.Node)
    const = b if data_first else a
    if not isinstance(const, numbers.Real) or isinstance(const, bool):
        raise unsupported(node, gm, "only arithmetic with a Python number is supported")
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
        raise unsupported(node, gm, "division by the input is not piecewise linear")
    return Affine(build.constant(scale), build.constant(shift), in_shape, live=build.live)


def _convert_module(
    node: fx.Node, gm: nn.Module, mod: nn.Module, in_shape: tuple, out_shape: tuple, build: Build
) -> list[Op]:
    if isinstance(mod, _IDENTITY_MODULES):
        return []
    if isinstance(mod, nn.ReLU):
        return [ReLU(in_shape)]
    if isinstance(mod, (nn.Flatten, nn.Unflatten)):
        return _reshape(node, gm, in_shape, out_shape)
    if isinstance(mod, nn.Linear):
        if len(in_shape) != 1:
            raise unsupported(node, gm, f"Linear on non-flat per-sample input {in_shape}")
        return [Linear(mod.weight, mod.bias, live=build.live)]
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            raise unsupported(node, gm, f"padding_mode={mod.padding_mode!r} (only 'zeros')")
        padding = mod.padding
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            else:  # 'same': symmetric only
                total = [d * (k - 1) for d, k in zip(mod.dilation, mod.kernel_size)]
                if any(t % 2 for t in total):
                    raise unsupported(node, gm, "asymmetric 'same' padding")
                padding = (total[0] // 2, total[1] // 2)
        op = Conv2d(
            mod.weight, mod.bias, in_shape, _pair(mod.stride), _pair(padding), _pair(mod.dilation), mod.groups,
            live=build.live,
        )  # fmt: skip
        if op.out_shape != tuple(out_shape):
            raise unsupported(node, gm, "output shape mismatch")
        return [op]
    if isinstance(mod, nn.MaxPool2d):
        a = {k: getattr(mod, k) for k in ("kernel_size", "stride", "padding", "dilation", "return_indices")}
        return [_maxpool(node, gm, in_shape, out_shape, a)]
    if isinstance(mod, nn.AvgPool2d):
        a = {k: getattr(mod, k) for k in ("kernel_size", "stride", "padding", "count_include_pad", "divisor_override")}
        return [_avgpool(node, gm, in_shape, out_shape, a, build)]
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if build.live:
            raise unsupported(node, gm, "certified training does not support BatchNorm (batch statistics in training)")
        if mod.running_mean is None or mod.running_var is None:
            raise unsupported(node, gm, "BatchNorm without running statistics uses batch statistics in eval mode")
        inv = 1.0 / torch.sqrt(mod.running_var.detach().to(DTYPE) + mod.eps)
        scale = inv if mod.weight is None else mod.weight.detach().to(DTYPE) * inv
        shift = -mod.running_mean.detach().to(DTYPE) * scale
        if mod.bias is not None:
            shift = shift + mod.bias.detach().to(DTYPE)
        extra = [1] * (len(in_shape) - 1)
        return [Affine(scale.reshape(-1, *extra), shift.reshape(-1, *extra), in_shape)]
    raise unsupported(node, gm)
