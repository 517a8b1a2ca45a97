"""Generalization measurements of a trained classifier: norms, a norm-based complexity term, gaps.

Three modules of one responsibility each, re-exported here so ``art_jacreg.generalization.X`` keeps working:

* :mod:`art_jacreg.generalization.measure` -- measurements of a classifier (layer norms, margins, Jacobian norms,
  standard and robust gaps) and :func:`generalization_report`, which measures them all;
* :mod:`art_jacreg.generalization.bounds` -- the mathematics of the spectrally-normalised margin bound of Bartlett,
  Foster and Telgarsky (2017), on numbers only (no ART);
* :mod:`art_jacreg.generalization.report` -- :class:`GeneralizationReport` and :class:`Gap`, their assembly with the
  bound terms, the vacuity flag and the markdown rendering.

Where the numeric bound is *vacuous* (larger than the range of the loss it bounds) the report says so in words.
The theory is in the docs (``docs/theory.rst``, section "Robust generalization").

| Paper link: https://arxiv.org/abs/2412.12449 (Wu and Li 2024)
| Paper link: https://arxiv.org/abs/1706.08498 (Bartlett, Foster and Telgarsky 2017)
"""

from art_jacreg.generalization.bounds import LOSS_RANGE, LayerNorms, margin_bound_term, spectral_complexity
from art_jacreg.generalization.measure import (
    empirical_gap,
    generalization_report,
    layer_norms,
    margins,
    mean_jacobian_norms,
)
from art_jacreg.generalization.report import Gap, GeneralizationReport

__all__ = [
    "LOSS_RANGE",
    "LayerNorms",
    "Gap",
    "GeneralizationReport",
    "layer_norms",
    "spectral_complexity",
    "margin_bound_term",
    "margins",
    "mean_jacobian_norms",
    "empirical_gap",
    "generalization_report",
]
