"""One vocabulary for argument validation, shared by the mathematics, the ART layer and the CLI (no ART imports).

Every validator names the argument it checks and says what was expected, so bad input is refused at the boundary
with a clear message instead of a stack trace from deep inside torch. Nothing here reinterprets bad input silently:
2-D labels must be exact one-hot rows, norms must be one of the known spellings of ``2`` and ``inf``. The validators
of arrays (inputs, labels, the clip box) are in :mod:`art_jacreg._validate_arrays` and re-exported here.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from art_jacreg._validate_arrays import (
    ONE_HOT_TOLERANCE,
    check_clip_range,
    check_finite,
    check_input_shape,
    validate_labels,
    validate_x,
)

__all__ = [
    "NORM_SPELLINGS",
    "METHODS",
    "ATTACKS",
    "ONE_HOT_TOLERANCE",
    "validate_norm",
    "norm_key",
    "norm_label",
    "validate_method",
    "validate_attack",
    "validate_real",
    "validate_eps",
    "validate_eps_per_sample",
    "validate_positive_int",
    "validate_labels",
    "check_input_shape",
    "check_finite",
    "validate_x",
    "check_clip_range",
]

#: Accepted string spellings of the two threat-model norms (compared after ``strip().lower()``).
NORM_SPELLINGS: dict[str, float] = {
    **dict.fromkeys(("2", "2.0", "l2", "l_2", "l-2"), 2.0),
    **dict.fromkeys(("inf", "np.inf", "infinity", "linf", "l-inf", "l_inf", "l∞", "∞"), math.inf),
}

#: Certification methods, from the loosest and fastest to the tightest.
METHODS = ("lipschitz", "interval", "linear")

#: Attacks of :mod:`art_jacreg.attacks`.
ATTACKS = ("apgd", "autoattack", "torchattacks", "pgd")
#: Built-in learning-rate schedules of the trainers (:mod:`art_jacreg.training.lr_schedule`).
LR_SCHEDULES = ("cosine", "step", "constant")


def validate_norm(norm: Any, name: str = "norm") -> float:
    """Normalise a threat-model norm to ``2.0`` or ``math.inf`` (the package's single implementation).

    :param norm: ``2``, ``2.0``, ``np.inf`` or a string of :data:`NORM_SPELLINGS` (``"2"``, ``"l2"``, ``"L2"``,
        ``"inf"``, ``"linf"``, ``"l-inf"``, ...), case-insensitive.
    :param name: Argument name used in error messages.
    :return: ``2.0`` or ``math.inf``.
    :raises ValueError: For any other value.
    """
    if isinstance(norm, str):
        value = NORM_SPELLINGS.get(norm.strip().lower())
        if value is not None:
            return value
    elif isinstance(norm, numbers.Real) and not isinstance(norm, bool):
        if float(norm) in (2.0, math.inf):
            return float(norm)
    raise ValueError(
        f"`{name}` must be 2 or np.inf (also accepted: '2', 'l2', 'L2', 'inf', 'linf', 'l-inf'), got {norm!r}."
    )


def norm_key(norm: Any) -> str:
    """The key of a norm in dicts and files: ``"2"`` or ``"inf"``.

    :param norm: Any spelling accepted by :func:`validate_norm`.
    :return: ``"2"`` or ``"inf"``.
    :raises ValueError: For an unknown norm.
    """
    return "inf" if validate_norm(norm) == math.inf else "2"


def norm_label(norm: Any, ascii_only: bool = False) -> str:
    """The display label of a norm: ``"l2"`` or ``"l∞"`` (``"linf"`` with ``ascii_only=True``).

    :param norm: Any spelling accepted by :func:`validate_norm`.
    :param ascii_only: Use ``"linf"`` instead of ``"l∞"``.
    :return: The label.
    :raises ValueError: For an unknown norm.
    """
    if validate_norm(norm) == 2.0:
        return "l2"
    return "linf" if ascii_only else "l∞"


def _choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    key = value.strip().lower() if isinstance(value, str) else value
    if key not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(repr(c) for c in choices)}, got {value!r}.")
    return key


def validate_method(method: Any, name: str = "method") -> str:
    """Check a certification method name.

    :param method: One of :data:`METHODS` (case-insensitive).
    :param name: Argument name used in error messages.
    :return: The lower-cased name.
    :raises ValueError: For any other value.
    """
    return _choice(method, METHODS, name)


def validate_attack(attack: Any, name: str = "attack") -> str:
    """Check an attack name.

    :param attack: One of :data:`ATTACKS` (case-insensitive).
    :param name: Argument name used in error messages.
    :return: The lower-cased name.
    :raises ValueError: For an unknown attack.
    """
    return _choice(attack, ATTACKS, name)


def validate_real(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """Validate a finite real number in a range (closed bounds unless ``open_low`` / ``open_high``).

    :param value: The value.
    :param name: Argument name used in error messages.
    :param low: Smallest accepted value (excluded with ``open_low``), or ``None`` for no lower bound.
    :param high: Largest accepted value (excluded with ``open_high``), or ``None`` for no upper bound.
    :param open_low: Exclude ``low`` itself.
    :param open_high: Exclude ``high`` itself.
    :return: ``value`` as a float.
    :raises TypeError: If it is not a real number (``bool`` included).
    :raises ValueError: If it is not finite or outside the range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}.")
    number = float(value)
    bad = not math.isfinite(number)
    bad |= low is not None and (number <= low if open_low else number < low)
    bad |= high is not None and (number >= high if open_high else number > high)
    if bad:
        lo = "" if low is None else f"{'>' if open_low else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if open_high else '<='} {high:g}"
        bounds = " and ".join(part for part in (lo, hi) if part)
        raise ValueError(f"`{name}` must be a finite number{' ' + bounds if bounds else ''}, got {value!r}.")
    return number


def validate_eps(eps: Any, name: str = "eps", allow_zero: bool = True) -> float:
    """Validate one perturbation radius.

    :param eps: The radius (raw-input units).
    :param name: Argument name used in error messages.
    :param allow_zero: Whether ``0`` is accepted.
    :return: ``eps`` as a float.
    :raises TypeError: If it is not a real number.
    :raises ValueError: If it is not finite and ``>= 0`` (``> 0`` when ``allow_zero`` is False).
    """
    return validate_real(eps, name, low=0.0, open_low=not allow_zero)


def validate_eps_per_sample(eps: Any, n: int, name: str = "eps") -> np.ndarray:
    """A radius per sample: a number or an array ``(n,)``, finite and ``>= 0``.

    :param eps: The radius or radii (array-like; torch tensors must be on the CPU).
    :param n: Number of samples.
    :param name: Argument name used in error messages.
    :return: A new float64 array ``(n,)``.
    :raises ValueError: Otherwise.
    """
    try:
        arr = np.array(eps, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is not None and arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr is None or arr.shape != (n,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"`{name}` must be a finite number >= 0 or an array of {n} such numbers, got {eps!r}.")
    return arr


def validate_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Validate an integer argument that must be at least ``minimum``.

    :param value: The value.
    :param name: Argument name used in error messages.
    :param minimum: Smallest accepted value.
    :return: ``value`` as an int.
    :raises ValueError: If it is not an integer ``>= minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)
