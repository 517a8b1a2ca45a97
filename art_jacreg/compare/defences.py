"""Compatibility view of the defence registry (the code lives in :mod:`~art_jacreg.compare.registry`,
:mod:`~art_jacreg.compare.adapters`, :mod:`~art_jacreg.compare.ibp`, :mod:`~art_jacreg.compare.certified` and
:mod:`~art_jacreg.compare.training`); every name importable from here before the split still is.
"""

from __future__ import annotations

from art_jacreg._art import seeded
from art_jacreg.compare.art_glue import NonSequential as _NonSequential
from art_jacreg.compare.art_glue import pgd_attack as _pgd
from art_jacreg.compare.catalogue import register_builtin_defences
from art_jacreg.compare.ibp import copy_back as _copy_back_ibp
from art_jacreg.compare.ibp import ibp_net as _ibp_net
from art_jacreg.compare.registry import (
    ADAPTATIONS,
    DEFENCES,
    DefenceSpec,
    get_defence,
    list_defences,
    register_defence,
)
from art_jacreg.compare.training import TrainContext, TrainOutcome, train_defence

register_builtin_defences()

__all__ = [
    "ADAPTATIONS",
    "DEFENCES",
    "DefenceSpec",
    "TrainContext",
    "TrainOutcome",
    "get_defence",
    "list_defences",
    "register_defence",
    "seeded",
    "train_defence",
    "_NonSequential",
    "_pgd",
    "_ibp_net",
    "_copy_back_ibp",
]
