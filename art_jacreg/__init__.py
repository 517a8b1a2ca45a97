"""art-jacreg: Jacobian regularization, first-order bounds and sound certificates for ART.

Public names: :class:`JacobianRegularizedTrainer`, :class:`CertifiedJacobianTrainer`, :class:`JacobianBoundReporter`,
:func:`load_mnist`.
Heavy imports (torch, ART) happen lazily, on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "JacobianRegularizedTrainer",
    "CertifiedJacobianTrainer",
    "JacobianBoundReporter",
    "BoundReport",
    "load_mnist",
    "__version__",
]

_LAZY = {
    "JacobianRegularizedTrainer": "art_jacreg.trainer",
    "CertifiedJacobianTrainer": "art_jacreg.certified_trainer",
    "JacobianBoundReporter": "art_jacreg.reporter",
    "BoundReport": "art_jacreg.bound_report",
    "load_mnist": "art_jacreg.data",
}


def __getattr__(name: str) -> Any:
    """Import public names lazily so ``import art_jacreg`` stays cheap."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'art_jacreg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
