"""The learning-rate schedule a trainer applies when ``fit`` is given no scheduler (pure torch, no ART).

Measured for certified training (``benchmarks/bench_certified_training.py``, ``mnist_cnn``, 4,000 digits, 40 epochs,
Adam 1e-3): a cosine decay of the learning rate over the run raised certified accuracy at l2 0.3 from 0.847 to 0.880
and at l2 1.0 from 0.462 to 0.548; the numbers are on the guide page "Choosing norm and reg_weight".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["LR_SCHEDULES", "default_scheduler", "learning_rates_restored"]

#: Built-in schedules: ``"cosine"`` (per epoch, from the optimizer's learning rate towards 0) or ``"constant"``.
LR_SCHEDULES = ("cosine", "constant")


def default_scheduler(name: str, optimizer: torch.optim.Optimizer, nb_epochs: int) -> Any | None:
    """The scheduler of a built-in schedule, stepped once per epoch by the training loop.

    :param name: One of :data:`LR_SCHEDULES`.
    :param optimizer: The classifier's optimizer.
    :param nb_epochs: Epochs of the whole run (a resumed run restores the scheduler's state from its checkpoint).
    :return: A ``torch.optim.lr_scheduler`` object, or ``None`` for a constant learning rate.
    :raises ValueError: For an unknown name.
    """
    if name not in LR_SCHEDULES:
        raise ValueError(f"`lr_schedule` must be one of {LR_SCHEDULES}, got {name!r}.")
    if name == "constant":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(nb_epochs)))


@contextlib.contextmanager
def learning_rates_restored(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Give back the optimizer's learning rates (and no scheduler bookkeeping) after a built-in schedule ran.

    :param optimizer: The classifier's optimizer; its ``lr`` per parameter group is restored on exit, and the
        ``initial_lr`` entry a torch scheduler adds is removed where the group had none.
    :return: A context manager.
    """
    saved = [(group["lr"], "initial_lr" in group) for group in optimizer.param_groups]
    try:
        yield
    finally:
        for group, (lr, had_initial) in zip(optimizer.param_groups, saved):
            group["lr"] = lr
            if not had_initial:
                group.pop("initial_lr", None)
