"""Deprecated alias of :mod:`art_jacreg.bound_report` (the module was renamed so it is not confused with
:mod:`art_jacreg.reporter`). Import :class:`~art_jacreg.bound_report.BoundReport` from ``art_jacreg`` or
``art_jacreg.bound_report`` instead.
"""

from __future__ import annotations

import warnings

from art_jacreg.bound_report import (  # noqa: F401 - re-exported names
    COLUMN_KINDS,
    EMPIRICAL,
    EXACT,
    FIRST_ORDER,
    SOUND,
    BoundReport,
)
from art_jacreg.bound_report import __all__ as __all__  # noqa: PLC0414

warnings.warn(
    "art_jacreg.report is deprecated; import BoundReport from art_jacreg or art_jacreg.bound_report.",
    DeprecationWarning,
    stacklevel=2,
)
