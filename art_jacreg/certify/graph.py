"""Former home of tracing, kept so that ``build_network`` and ``UnsupportedOperationError`` still import from here.

Tracing is :mod:`art_jacreg.certify.trace`, node conversion :mod:`art_jacreg.certify.convert`.
"""

from __future__ import annotations

from art_jacreg.certify.convert import UnsupportedOperationError  # noqa: F401
from art_jacreg.certify.trace import build_network  # noqa: F401
