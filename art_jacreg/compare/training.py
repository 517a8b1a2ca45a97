"""Train one defence: the shared context every adapter gets, the models the harness can train, and the call."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from art_jacreg._art import seeded
from art_jacreg.compare.art_glue import quiet_streams, training_eps
from art_jacreg.compare.registry import ADAPTERS, DefenceSpec

logger = logging.getLogger(__name__)

__all__ = ["MODELS", "TrainContext", "TrainOutcome", "model_factory", "train_defence"]


class ModelFactory(Protocol):
    """A model constructor of :mod:`art_jacreg.models`: ``f(seed=...) -> nn.Sequential``."""

    def __call__(self, seed: int | None = ...) -> Any:  # noqa: D102
        ...


def _models() -> dict[str, ModelFactory]:
    from art_jacreg.models import mnist_cnn, mnist_maxpool_cnn

    return {"mnist_cnn": mnist_cnn, "mnist_maxpool_cnn": mnist_maxpool_cnn}


#: Architectures a comparison can train (names of :mod:`art_jacreg.models` functions).
MODELS: tuple[str, ...] = ("mnist_cnn", "mnist_maxpool_cnn")


def model_factory(name: str) -> ModelFactory:
    """The constructor ``f(seed) -> nn.Sequential`` of a model name.

    :param name: One of :data:`MODELS`.
    :return: The constructor.
    :raises ValueError: For an unknown name.
    """
    if name not in MODELS:
        raise ValueError(f"`model` must be one of {', '.join(MODELS)}, got {name!r}.")
    return _models()[name]


@dataclass
class TrainContext:
    """What every adapter gets: data, budget and seed, identical across defences.

    :ivar x: Training inputs ``(N, 1, 28, 28)`` in ``[0, 1]``.
    :ivar y: One-hot labels ``(N, 10)``.
    :ivar epochs: Epoch budget.
    :ivar batch_size: Mini-batch size.
    :ivar lr: Adam learning rate.
    :ivar seed: Seed of the initial weights and of every random generator during training (data order included).
    :ivar train_eps: Training perturbation size per norm, keys ``"2"`` and ``"inf"``.
    :ivar verbose: Let the trainers show their progress bars.
    :ivar model: Architecture, one of :data:`MODELS`.
    """

    x: np.ndarray
    y: np.ndarray
    epochs: int
    batch_size: int
    lr: float
    seed: int
    train_eps: dict[str, float]
    verbose: bool = False
    model: str = "mnist_cnn"


@dataclass
class TrainOutcome:
    """An adapter's result.

    :ivar model: The trained ``nn.Sequential`` (the context's architecture).
    :ivar seconds: Wall-clock training time.
    :ivar train_eps: Perturbation size trained against (``None`` for plain and Jacobian-regularized training).
    :ivar adaptations: What the harness did around ART for this defence.
    :ivar details: Extra trainer settings actually used (attack steps, beta, ...).
    """

    model: Any
    seconds: float
    train_eps: float | None
    adaptations: list[str]
    details: dict[str, Any]


def train_defence(spec: DefenceSpec, ctx: TrainContext) -> TrainOutcome:
    """Train ``ctx.model`` (initialised with ``ctx.seed``) with the defence ``spec``.

    :param spec: The defence.
    :param ctx: Data, budget, seed and architecture.
    :return: :class:`TrainOutcome`.
    :raises Exception: Whatever the trainer raises; the harness turns it into an error row.
    """
    factory = model_factory(ctx.model)
    entry = ADAPTERS[spec.trainer]
    logger.info("training %s (%s, %s, seed %d, %d epochs)", spec.name, spec.trainer, ctx.model, ctx.seed, ctx.epochs)
    with seeded(ctx.seed), quiet_streams(not ctx.verbose):
        model = factory(seed=ctx.seed)  # inside `seeded`: the caller's global torch generator is left alone
        start = time.perf_counter()
        details = entry.train(spec, ctx, model)
        seconds = time.perf_counter() - start
    model.eval()
    # JR has no attack and no eps: its threat norm only selects the regulariser.
    train_eps = None if spec.norm is None or spec.trainer == "jr" else training_eps(spec, ctx)
    return TrainOutcome(model, seconds, train_eps, list(entry.adaptations), details)
