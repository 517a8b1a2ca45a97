"""Registry slot of ``art_jacreg.CertifiedJacobianTrainer`` (the certified objective with a global or local bound).

The adapter is written against the trainer's contract::

    CertifiedJacobianTrainer(classifier, norm=2, eps=0.3, bound="local" | "global", seed=...)
    trainer.fit(x, y, batch_size=..., nb_epochs=...)

and registered only when the class can be imported, so the ``certified-*`` rows appear by themselves once the
trainer lands in the package (:func:`certified_available`).
"""

from __future__ import annotations

from typing import Any

from art_jacreg.compare.art_glue import classifier, training_eps
from art_jacreg.compare.registry import DefenceSpec, adapter, register_defence

__all__ = ["certified_available", "CERTIFIED_DEFENCES", "register_certified_defences"]


def certified_available() -> bool:
    """Whether ``art_jacreg.CertifiedJacobianTrainer`` exists.

    :return: ``True`` when it can be imported.
    """
    try:
        from art_jacreg import CertifiedJacobianTrainer  # noqa: F401
    except ImportError:
        return False
    return True


def _train_certified(spec: DefenceSpec, ctx: Any, model: Any) -> dict[str, Any]:
    from art_jacreg import CertifiedJacobianTrainer

    clf = classifier(model, ctx)
    eps = training_eps(spec, ctx)
    bound = spec.params.get("bound", "local")
    trainer = CertifiedJacobianTrainer(clf, norm=spec.norm, eps=eps, bound=bound, seed=ctx.seed)
    trainer.fit(ctx.x, ctx.y, batch_size=ctx.batch_size, nb_epochs=ctx.epochs)
    return {"bound": bound, "eps": eps}


#: The certified rows: name, norm, bound, training radius (the certified headline radius of its norm).
CERTIFIED_DEFENCES: tuple[tuple[str, float, str, float], ...] = (
    ("certified-global-l2", 2.0, "global", 0.3),
    ("certified-local-l2", 2.0, "local", 0.3),
    ("certified-local-linf", float("inf"), "local", 0.1),
)


def register_certified_defences() -> list[str]:
    """Register the adapter and the ``certified-*`` defences if the trainer exists.

    :return: The names registered (empty when ``CertifiedJacobianTrainer`` is not available).
    """
    if not certified_available():
        return []
    adapter(
        "certified",
        ["none: art_jacreg.CertifiedJacobianTrainer"],
        "the trainer's defaults; trained at the certified headline radius of its norm",
    )(_train_certified)
    for name, norm, bound, eps in CERTIFIED_DEFENCES:
        register_defence(
            DefenceSpec(name, "certified", norm, {"bound": bound}, f"CertifiedJacobianTrainer, {bound} bound", eps)
        )
    return [name for name, *_ in CERTIFIED_DEFENCES]
