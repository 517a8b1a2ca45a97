"""The built-in defences: plain training, ART's trainers at the protocol's radii and at the standard MNIST radii
(l-inf 0.3, l2 1.5), Jacobian regularization at three weights per norm, and the certified trainer's slot.
"""

from __future__ import annotations

import numpy as np

from art_jacreg.compare import adapters, ibp  # noqa: F401  (registers the adapters)
from art_jacreg.compare.certified import register_certified_defences
from art_jacreg.compare.registry import DefenceSpec, register_defence

__all__ = ["register_builtin_defences"]


def register_builtin_defences() -> None:
    """Register the built-in defences (idempotent)."""
    inf = float(np.inf)
    pgd7 = {"max_iter": 7}
    specs = [
        DefenceSpec("plain", "plain", None, {}, "plain cross-entropy training (PyTorchClassifier.fit)"),
        DefenceSpec("fgsm", "fgsm", inf, {"ratio": 0.5}, "ART AdversarialTrainer with FGSM (l-inf), ratio 0.5"),
        DefenceSpec("madry", "madry", inf, pgd7, "ART AdversarialTrainerMadryPGD (l-inf PGD-7)"),
        DefenceSpec("madry-0.3", "madry", inf, pgd7, "ART AdversarialTrainerMadryPGD at l-inf 0.3 (PGD-7)", 0.3),
        DefenceSpec("pgd-l2", "pgd", 2.0, pgd7, "ART AdversarialTrainer with l2 PGD-7, ratio 1.0"),
        DefenceSpec("pgd-l2-1.5", "pgd", 2.0, pgd7, "ART AdversarialTrainer with l2 PGD-7 at l2 1.5", 1.5),
        DefenceSpec("trades", "trades", inf, {**pgd7, "beta": 6.0}, "ART TRADES (l-inf PGD-7, beta 6)"),
        DefenceSpec("trades-0.3", "trades", inf, {**pgd7, "beta": 6.0}, "ART TRADES at l-inf 0.3 (PGD-7, beta 6)", 0.3),
        DefenceSpec("fbf", "fbf", inf, {}, "ART Fast-is-better-than-Free (l-inf FGSM with random start)"),
        DefenceSpec("awp", "awp", inf, {**pgd7, "gamma": 0.005, "warmup": 0}, "ART AWP, PGD mode (l-inf)"),
        DefenceSpec("ibp", "ibp", inf, {}, "ART certified IBP training (l-inf boxes), Gowal et al. ramp"),
        DefenceSpec("ibp-0.4", "ibp", inf, {}, "ART certified IBP at l-inf 0.4 (Gowal et al.'s recipe for 0.3)", 0.4),
    ]
    for weight in (0.001, 0.01, 0.1):
        specs.append(
            DefenceSpec(
                f"jr-l2-{weight:g}",
                "jr",
                2.0,
                {"reg_weight": weight, "n_projections": 1},
                f"Jacobian regularization, ||J||_F^2, weight {weight:g} (1 random projection)",
            )
        )
    for weight in (0.0003, 0.001, 0.003):
        specs.append(
            DefenceSpec(
                f"jr-linf-{weight:g}",
                "jr",
                inf,
                {"reg_weight": weight, "n_rows": 1},
                f"Jacobian regularization, ||J||_11, weight {weight:g} (1 sampled row)",
            )
        )
    for spec in specs:
        register_defence(spec)
    # ------------------------------------------------------------------------------------------------------------
    # CERTIFIED TRAINER SLOT: the certified-global-l2 / certified-local-l2 / certified-local-linf rows register
    # themselves here as soon as `art_jacreg.CertifiedJacobianTrainer` exists (see art_jacreg.compare.certified).
    # ------------------------------------------------------------------------------------------------------------
    register_certified_defences()
