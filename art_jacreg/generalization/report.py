r"""The generalization report: the measured gaps and norms of one model, the bound derived, and their rendering.

:class:`Gap` holds train/test loss and accuracy (clean or under attack); :class:`GeneralizationReport` assembles the
measured parts (:mod:`art_jacreg.generalization.measure`) with the bound terms
(:mod:`art_jacreg.generalization.bounds`), says in words when the bound is vacuous, and renders as a dict or markdown.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from art_jacreg import _validate
from art_jacreg.generalization.bounds import (
    LOSS_RANGE,
    LayerNorms,
    empirical_margin,
    margin_bound_term,
    spectral_complexity,
)

__all__ = ["Gap", "GeneralizationReport"]


@dataclass
class Gap:
    """Train and test loss and accuracy, and the generalization gaps.

    Both gaps are oriented so that a *positive* value means the model does worse on test data:
    ``loss_gap = loss_test - loss_train`` and ``accuracy_gap = accuracy_train - accuracy_test``.

    :ivar loss_train: Mean cross-entropy on the training sample.
    :ivar loss_test: Mean cross-entropy on the test sample.
    :ivar accuracy_train: Accuracy on the training sample.
    :ivar accuracy_test: Accuracy on the test sample.
    :ivar eps: Attack radius (``0`` for the standard gap).
    :ivar norm: ``"2"``, ``"inf"`` or ``None`` for the standard gap.
    """

    loss_train: float
    loss_test: float
    accuracy_train: float
    accuracy_test: float
    eps: float = 0.0
    norm: str | None = None

    @property
    def loss_gap(self) -> float:
        """``loss_test - loss_train``."""
        return self.loss_test - self.loss_train

    @property
    def accuracy_gap(self) -> float:
        """``accuracy_train - accuracy_test``."""
        return self.accuracy_train - self.accuracy_test

    def to_dict(self) -> dict[str, Any]:
        """Plain dict including the two gaps.

        :return: JSON-serialisable dict.
        """
        return {**asdict(self), "loss_gap": self.loss_gap, "accuracy_gap": self.accuracy_gap}


@dataclass
class GeneralizationReport:
    """The measurable terms of the generalization theory for one model, with an honest vacuity flag.

    :ivar layers: Per-layer norms (:func:`~art_jacreg.generalization.measure.layer_norms`).
    :ivar spectral_product: ``prod_i ||A_i||_2`` (upper bound; also an upper bound on the l2 Lipschitz constant).
    :ivar frobenius_product: ``prod_i ||A_i||_F``.
    :ivar spectral_complexity: ``R_A`` of Bartlett, Foster and Telgarsky (2017) with ``M_i = 0``.
    :ivar margin: ``gamma``, the ``margin_quantile`` quantile of the *positive* training margins (correctly
        classified points), so it is positive whenever one training point is classified correctly.
    :ivar margin_quantile: Quantile used for ``gamma``.
    :ivar margin_violations: Fraction of training points with margin ``< gamma`` (the empirical margin loss of the
        bound, at most the training error plus ``margin_quantile``).
    :ivar data_norm: ``||X||_F`` of the training inputs used.
    :ivar n_train: Number of training inputs used.
    :ivar margin_bound: ``R_A ||X||_F / (gamma n)`` (:func:`~art_jacreg.generalization.bounds.margin_bound_term`),
        ``nan`` if ``gamma <= 0``.
    :ivar vacuous: True when ``margin_violations + margin_bound`` exceeds
        :data:`~art_jacreg.generalization.bounds.LOSS_RANGE` or cannot be evaluated.
    :ivar jacobian_train: Mean Jacobian norms on the training inputs
        (:func:`~art_jacreg.generalization.measure.mean_jacobian_norms`).
    :ivar jacobian_test: Mean Jacobian norms on the test inputs.
    :ivar standard_gap: Clean :class:`Gap`.
    :ivar robust_gaps: Robust :class:`Gap` per norm key (``"2"``, ``"inf"``), possibly empty.
    :ivar notes: Plain-language remarks (vacuity, units).
    """

    layers: list[LayerNorms]
    spectral_product: float
    frobenius_product: float
    spectral_complexity: float
    margin: float
    margin_quantile: float
    margin_violations: float
    data_norm: float
    n_train: int
    margin_bound: float
    vacuous: bool
    jacobian_train: dict[str, float]
    jacobian_test: dict[str, float]
    standard_gap: Gap
    robust_gaps: dict[str, Gap] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        layers: list[LayerNorms],
        train_margins: np.ndarray,
        data_norm: float,
        jacobian_train: dict[str, float],
        jacobian_test: dict[str, float],
        standard_gap: Gap,
        robust_gaps: dict[str, Gap] | None = None,
        margin_quantile: float = 0.1,
    ) -> GeneralizationReport:
        """Assemble a report from measured parts (products, ``R_A``, the margin term and the vacuity flag derived).

        :param layers: :func:`~art_jacreg.generalization.measure.layer_norms` output.
        :param train_margins: :func:`~art_jacreg.generalization.measure.margins` on the training inputs.
        :param data_norm: ``||X||_F`` of those inputs.
        :param jacobian_train: :func:`~art_jacreg.generalization.measure.mean_jacobian_norms` on training inputs.
        :param jacobian_test: :func:`~art_jacreg.generalization.measure.mean_jacobian_norms` on test inputs.
        :param standard_gap: Clean gap.
        :param robust_gaps: Robust gaps per norm key.
        :param margin_quantile: Quantile of the positive training margins used as ``gamma``, in ``(0, 1)``.
        :return: The report.
        :raises ValueError: If ``margin_quantile`` is not in ``(0, 1)`` or ``layers`` is empty.
        """
        gamma, violations = empirical_margin(train_margins, margin_quantile)
        train_margins = np.asarray(train_margins, dtype=np.float64)
        n = int(len(train_margins))
        r_a = spectral_complexity(layers)
        term = margin_bound_term(r_a, data_norm, gamma, n)
        total = violations + term
        vacuous = not (total <= LOSS_RANGE)
        notes = []
        if not np.any(train_margins > 0):
            notes.append(
                "No training point is classified correctly, so no positive margin exists and the margin "
                "bound cannot be evaluated: it is vacuous."
            )
        elif vacuous:
            notes.append(
                f"VACUOUS: the margin bound, empirical margin loss {violations:.3g} + complexity term R_A ||X||_F / "
                f"(gamma n) = {term:.3g}, exceeds {LOSS_RANGE:g}, the range of the 0-1 error it bounds (and it omits "
                "log factors and constants that only make it larger). It says nothing about this model's test error; "
                "only its relative size across models is informative."
            )
        else:
            notes.append(
                f"The margin bound {violations:.3g} + {term:.3g} is <= {LOSS_RANGE:g} (non-vacuous before log factors)."
            )
        notes.append(
            "Spectral norms are sound upper bounds (art_jacreg.certify.layer_operator_norms), so R_A and the products "
            "are upper bounds too; eps and x are in raw input units."
        )
        return cls(
            layers=list(layers),
            spectral_product=float(np.prod([layer.spectral for layer in layers])),
            frobenius_product=float(np.prod([layer.frobenius for layer in layers])),
            spectral_complexity=r_a,
            margin=gamma,
            margin_quantile=margin_quantile,
            margin_violations=violations,
            data_norm=float(data_norm),
            n_train=n,
            margin_bound=term,
            vacuous=vacuous,
            jacobian_train=dict(jacobian_train),
            jacobian_test=dict(jacobian_test),
            standard_gap=standard_gap,
            robust_gaps=dict(robust_gaps or {}),
            notes=notes,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``nan`` kept as float ``nan``).

        :return: The dict.
        """
        out = {k: v for k, v in self.__dict__.items() if k not in ("layers", "standard_gap", "robust_gaps")}
        out["layers"] = [asdict(layer) for layer in self.layers]
        out["standard_gap"] = self.standard_gap.to_dict()
        out["robust_gaps"] = {k: g.to_dict() for k, g in self.robust_gaps.items()}
        return out

    def to_markdown(self) -> str:
        """A human-readable markdown report; a vacuous bound is said to be vacuous, in words.

        :return: Markdown text.
        """
        lines = ["## Generalization report", "", "### Layer norms", ""]
        lines += ["| layer | operator | shape | spectral (upper bound) | Frobenius | ‖Aᵀ‖₂,₁ |", "|---|" * 6]
        for layer in self.layers:
            lines.append(
                f"| {layer.index} | {layer.kind} | {layer.shape[0]}×{layer.shape[1]} | {layer.spectral:.4g} | "
                f"{layer.frobenius:.4g} | {layer.l21_transpose:.4g} |"
            )
        lines.append(f"| **product** | | | {self.spectral_product:.4g} | {self.frobenius_product:.4g} | |")
        verdict = "**VACUOUS**" if self.vacuous else "non-vacuous"
        lines += [
            "",
            "### Norm-based complexity (Bartlett, Foster and Telgarsky 2017)",
            "",
            "R_A = (prod_i ||A_i||_2) * (sum_i ||A_i^T||_{2,1}^{2/3} / ||A_i||_2^{2/3})^{3/2} (M_i = 0); "
            "term = R_A ||X||_F / (gamma n), log factors and constants omitted.",
            "",
            f"- spectral complexity R_A: {self.spectral_complexity:.4g}",
            f"- margin gamma ({self.margin_quantile:.0%} quantile of the positive training margins): "
            f"{self.margin:.4g}; training points below it: {self.margin_violations:.3f}",
            f"- ||X||_F: {self.data_norm:.4g}, n = {self.n_train}",
            f"- margin-bound term: {self.margin_bound:.4g}; bound on the test error = {self.margin_violations:.3f} + "
            f"{self.margin_bound:.4g} ({verdict}: the error lies in [0, {LOSS_RANGE:g}])",
            "",
            "### Mean Jacobian norms (logits w.r.t. raw input)",
            "",
            "| data | ‖J‖_F | ‖J‖₁,₁ |",
            "|---|---|---|",
            f"| train | {self.jacobian_train['frobenius']:.4g} | {self.jacobian_train['l11']:.4g} |",
            f"| test | {self.jacobian_test['frobenius']:.4g} | {self.jacobian_test['l11']:.4g} |",
            "",
            "### Empirical generalization gaps (loss gap = test - train, accuracy gap = train - test)",
            "",
            "| gap | loss train | loss test | loss gap | acc train | acc test | acc gap |",
            "|---|---|---|---|---|---|---|",
        ]
        gaps = [("standard", self.standard_gap)]
        gaps += [(f"robust {_validate.norm_label(k)} eps {g.eps:g}", g) for k, g in self.robust_gaps.items()]
        for name, g in gaps:
            lines.append(
                f"| {name} | {g.loss_train:.4f} | {g.loss_test:.4f} | {g.loss_gap:+.4f} | {g.accuracy_train:.4f} | "
                f"{g.accuracy_test:.4f} | {g.accuracy_gap:+.4f} |"
            )
        lines += ["", *[f"- {note}" for note in self.notes], ""]
        return "\n".join(lines)
