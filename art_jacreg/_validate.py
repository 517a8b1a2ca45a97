"""One vocabulary for argument validation, shared by the mathematics, the ART layer and the CLI (no ART imports).

Every validator names the argument it checks and says what was expected, so bad input is refused at the boundary
with a clear message instead of a stack trace from deep inside torch.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = ["check_clip_range"]


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
