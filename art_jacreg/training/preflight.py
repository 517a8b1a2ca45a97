"""Checks of an ART classifier and of ``fit`` arguments before a training run starts (nothing is trained yet).

Every message names the argument (``classifier.loss``, ``classifier.preprocessing``, ``scheduler``, ...) and says
what to do, so a run that cannot work fails before the first step instead of deep inside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from art_jacreg.training.checks import check_float32_model, has_batch_norm
from art_jacreg.training.objectives import cross_entropy_like

__all__ = ["optimizer_of", "check_scheduler", "check_trainable", "check_batch_size_for_batch_norm"]


def optimizer_of(classifier: Any) -> torch.optim.Optimizer:
    """The classifier's optimizer.

    :param classifier: An ART ``PyTorchClassifier``.
    :return: Its optimizer.
    :raises ValueError: If it has none.
    """
    optimizer = classifier.optimizer
    if optimizer is None:
        raise ValueError(
            "The classifier has no optimizer (`optimizer=None`); create the PyTorchClassifier with an optimizer "
            "over the model's parameters to train it."
        )
    return optimizer


def check_scheduler(scheduler: Any, optimizer: torch.optim.Optimizer | None) -> None:
    """Check an optional LR scheduler: it has ``step()`` and, if it names one, drives ``optimizer``.

    :param scheduler: The scheduler or ``None``.
    :param optimizer: The classifier's optimizer.
    :raises TypeError: If it has no ``step()``.
    :raises ValueError: If it is attached to another optimizer.
    """
    if scheduler is None:
        return
    if not callable(getattr(scheduler, "step", None)):
        raise TypeError(
            f"`scheduler` must be None or an LR scheduler with a .step() method, got {type(scheduler).__name__}."
        )
    sched_opt = getattr(scheduler, "optimizer", None)
    if sched_opt is not None and sched_opt is not optimizer:
        raise ValueError("`scheduler` is attached to a different optimizer than the classifier's optimizer.")


def check_trainable(classifier: Any) -> None:
    """Check the classifier's model dtype, loss and preprocessing for training.

    :param classifier: An ART ``PyTorchClassifier``.
    :raises ValueError: For a non-float32 model (``model.float()``), a loss other than ``CrossEntropyLoss``, or a
        ``preprocessing`` standard deviation of 0.
    """
    check_float32_model(classifier.model, "classifier.model")
    cross_entropy_like(classifier.loss)
    for step in classifier.preprocessing_operations or []:
        std = getattr(step, "std", None)
        if std is not None and np.any(np.asarray(std) == 0):
            raise ValueError(
                f"`classifier.preprocessing` has a standard deviation of 0 (std={std!r}); normalising by it "
                "divides by zero. Give a positive std (e.g. preprocessing=(0.1307, 0.3081) for MNIST)."
            )


def check_batch_size_for_batch_norm(model: torch.nn.Module, batch_size: int, name: str) -> None:
    """Refuse batches of one sample for a model with BatchNorm layers (they cannot normalise one sample).

    :param model: The model.
    :param batch_size: The number of samples per batch (or in the data, if fewer).
    :param name: The argument that sets it.
    :raises ValueError: If ``batch_size == 1`` and the model has BatchNorm layers.
    """
    if batch_size == 1 and has_batch_norm(model):
        raise ValueError(
            f"`{name}` gives batches of 1 sample, but the model has BatchNorm layers, which cannot normalise a "
            "single sample in training mode; use at least 2 samples per batch."
        )
