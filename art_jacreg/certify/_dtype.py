"""The precision of every network and bound of :mod:`art_jacreg.certify`, and the per-sample shape type.

Parameters and bounds are float64 so that rounding cannot make a certificate wrong.
"""

from __future__ import annotations

import torch

__all__ = ["DTYPE", "Shape"]

DTYPE = torch.float64
Shape = tuple[int, ...]
