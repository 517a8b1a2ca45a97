"""The array half of the validation vocabulary (no ART imports): input batches, labels, the clip box.

Re-exported by :mod:`art_jacreg._validate`, the one place callers import validators from. Every check names the
argument and says what was expected; nothing is reinterpreted silently (2-D labels must be exact one-hot rows).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = [
    "ONE_HOT_TOLERANCE",
    "validate_labels",
    "check_input_shape",
    "check_finite",
    "validate_x",
    "check_clip_range",
]

#: Absolute tolerance on the entries of one-hot label rows (``1 ± tol`` and ``0 ± tol``).
ONE_HOT_TOLERANCE = 1e-6


def _one_hot_indices(arr: np.ndarray, name: str) -> np.ndarray:
    """Indices of exact one-hot rows; refuses any other row, naming the first bad one."""
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"`{name}` must be numeric one-hot rows, got dtype {arr.dtype}.")
    values = arr.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"`{name}` contains NaN or inf values.")
    ones = np.abs(values - 1.0) <= ONE_HOT_TOLERANCE
    zeros = np.abs(values) <= ONE_HOT_TOLERANCE
    good = (ones.sum(axis=1) == 1) & (zeros.sum(axis=1) == values.shape[1] - 1)
    if not np.all(good):
        row = int(np.flatnonzero(~good)[0])
        shown = np.array2string(values[row], precision=4, threshold=12, separator=", ")
        raise ValueError(
            f"`{name}` is 2-D, so it must be one-hot: every row exactly one entry 1 and the others 0 (tolerance "
            f"{ONE_HOT_TOLERANCE:g}); row {row} is {shown}. All-zero, negated, multi-hot and soft-label rows are "
            "refused; pass class indices of shape (N,) instead."
        )
    return np.argmax(ones, axis=1).astype(np.int64)


def validate_labels(y: Any, n_samples: int, nb_classes: int, name: str = "y") -> np.ndarray:
    """Labels as int64 class indices, from indices ``(N,)`` (or ``(N, 1)``) or exact one-hot rows ``(N, K)``.

    :param y: The labels (array-like; torch tensors must be on the CPU).
    :param n_samples: Expected number of labels ``N``.
    :param nb_classes: Number of classes ``K``.
    :param name: Argument name used in error messages.
    :return: A new int64 array of shape ``(N,)``.
    :raises TypeError: If ``y`` is not array-like.
    :raises ValueError: On a wrong length or shape, non-integer indices, labels outside ``[0, K)``, or 2-D rows that
        are not exactly one-hot (soft labels are not supported).
    """
    try:
        arr = np.asarray(y)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be an array of labels, got {type(y).__name__}.") from err
    if arr.ndim == 2 and arr.shape[1] == 1 and nb_classes != 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        if arr.shape[1] != nb_classes:
            raise ValueError(f"`{name}` is 2-D, so it must be one-hot with {nb_classes} columns, got {arr.shape}.")
        indices = _one_hot_indices(arr, name)
    elif arr.ndim == 1:
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise ValueError(f"`{name}` as 1-D labels must hold integer class indices.")
        elif arr.dtype.kind not in "iub":
            raise ValueError(f"`{name}` must hold integer class indices, got dtype {arr.dtype}.")
        indices = arr.astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= nb_classes):
            raise ValueError(
                f"`{name}` holds labels out of range: expected values in [0, {nb_classes - 1}], "
                f"got min {indices.min()} and max {indices.max()}."
            )
    else:
        raise ValueError(f"`{name}` must be class indices (N,) or one-hot (N, {nb_classes}), got shape {arr.shape}.")
    if indices.shape[0] != n_samples:
        raise ValueError(f"`{name}` has {indices.shape[0]} labels but there are {n_samples} samples.")
    return indices


def check_input_shape(shape: tuple[int, ...], input_shape: tuple[int, ...], name: str = "x") -> None:
    """Check that a batch shape is ``(N, *input_shape)``.

    :param shape: The batch's shape.
    :param input_shape: Shape of one input.
    :param name: Argument name used in error messages.
    :raises ValueError: Otherwise.
    """
    expected = tuple(int(s) for s in input_shape)
    if len(shape) != len(expected) + 1 or tuple(shape[1:]) != expected:
        raise ValueError(
            f"`{name}` must have shape (N, {', '.join(str(s) for s in expected)}) to match input_shape "
            f"{expected}, got {tuple(shape)}."
        )


def check_finite(arr: np.ndarray, name: str = "x") -> None:
    """Refuse NaN and inf values.

    :param arr: The array.
    :param name: Argument name used in error messages.
    :raises ValueError: If a value is NaN or infinite.
    """
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or inf values.")


def validate_x(x: Any, input_shape: tuple[int, ...], name: str = "x") -> np.ndarray:
    """Validate an input batch against ``input_shape`` and return a float32 copy.

    :param x: Array-like of shape ``(N, *input_shape)``, ``N >= 1``.
    :param input_shape: Shape of one input.
    :param name: Argument name used in error messages.
    :return: A new float32 array (the caller's array is never modified).
    :raises TypeError: If ``x`` is not numeric.
    :raises ValueError: On a wrong shape, an empty batch, or NaN/inf values.
    """
    try:
        arr = np.array(x, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a numeric array, got {type(x).__name__}.") from err
    check_input_shape(arr.shape, input_shape, name)
    if arr.shape[0] == 0:
        raise ValueError(f"`{name}` is empty; at least one sample is needed.")
    check_finite(arr, name)
    return arr


def check_clip_range(x: np.ndarray, clip_values: Any, name: str = "x", error: bool = True) -> None:
    """Check that every value of ``x`` lies in the ``clip_values`` box of the classifier.

    An input outside the box (e.g. pixels in ``0..255`` given to a ``(0, 1)`` classifier) makes certificates and
    attacks meaningless, so it is refused (``error=True``) or warned about (``error=False``).

    :param x: The input batch (raw units).
    :param clip_values: ``(min, max)`` of the classifier (scalars or arrays broadcastable to one input), or ``None``.
    :param name: Argument name used in the message.
    :param error: Raise ``ValueError`` when ``True``, emit a ``UserWarning`` when ``False``.
    :raises ValueError: If ``error`` and a value lies outside the box.
    """
    if clip_values is None:
        return
    low = np.asarray(clip_values[0], dtype=np.float64)
    high = np.asarray(clip_values[1], dtype=np.float64)
    arr = np.asarray(x)
    tol = 1e-6 * max(1.0, float(np.max(np.abs(high - low))))
    below = arr < low - tol
    above = arr > high + tol
    if not (below.any() or above.any()):
        return
    count = int(np.count_nonzero(below | above))
    message = (
        f"`{name}` has {count} values outside the classifier's clip_values box "
        f"[{float(low.min()):.4g}, {float(high.max()):.4g}] (found range [{float(arr.min()):.4g}, "
        f"{float(arr.max()):.4g}]); scale the input to the box first (e.g. divide 0..255 pixels by 255)."
    )
    if error:
        raise ValueError(message)
    warnings.warn(message, UserWarning, stacklevel=3)
