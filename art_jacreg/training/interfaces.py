"""What the training loop asks of an objective and offers to its hooks (the contracts of
:class:`~art_jacreg.training.loop.TrainingLoop`).

An objective maps ``(forward, x_batch, y_batch)`` to an :class:`ObjectiveOutput`; :class:`LoopHooks` are the
extension points that :mod:`art_jacreg.training.distributed` and :mod:`art_jacreg.training.checkpoint` implement.
All three are importable from :mod:`art_jacreg.training.loop` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

__all__ = ["Forward", "Batches", "ObjectiveOutput", "Objective", "LoopHooks"]

#: Differentiable map from an input batch to logits.
Forward = Callable[[torch.Tensor], torch.Tensor]
#: The ``(x, y)`` numpy batches of one epoch.
Batches = Iterable[tuple[np.ndarray, np.ndarray]]


class ObjectiveOutput(NamedTuple):
    """What an objective returns for one batch.

    :ivar loss: Scalar total loss to minimise (differentiable w.r.t. the weights).
    :ivar parts: Named scalar batch means for the history (detached; ``None`` for a part not computed).
    :ivar correct: Number of correctly classified samples of the batch (tensor), for the training accuracy.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor | None]
    correct: torch.Tensor


class Objective(Protocol):
    """A training objective: ``objective(forward, x, y) -> ObjectiveOutput``."""

    def __call__(self, forward: Forward, x: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        """The loss of the batch ``(x, y)`` through ``forward``, with its named parts and correct count."""
        ...


class LoopHooks:
    """Extension points of :class:`TrainingLoop`; the defaults run one process and add nothing.

    A data-parallel run overrides :meth:`wrap_forward` (run the model inside ``DistributedDataParallel``),
    :meth:`shard` (take this rank's share of an epoch's batches), :meth:`reduce_sums` and :meth:`all_ok`
    (all-reduce the history sums and the finiteness verdict of a step), :meth:`finish` (drop the wrapper) and
    :attr:`is_main` (progress bar and logging on rank 0 only); a resumable run saves a checkpoint in
    :meth:`on_epoch_end`. :meth:`barrier`, :meth:`gather` and :meth:`broadcast` are the collectives a checkpoint
    needs (trivial in one process).
    """

    #: Whether this process shows the progress bar and logs the epochs.
    is_main: bool = True

    def wrap_forward(self, forward: Forward) -> Forward:
        """The forward function the objective calls during a run (default: ``forward`` itself)."""
        return forward

    def finish(self) -> None:
        """Called when a run ends, normally or by an exception (default: nothing)."""

    def shard(self, batches: Batches, epoch: int) -> Batches:
        """The batches of ``epoch`` that this process trains on (default: all of them)."""
        return batches

    def reduce_sums(self, sums: torch.Tensor) -> torch.Tensor:
        """Combine the epoch's history sums over processes (default: unchanged). The last entry is the count."""
        return sums

    def all_ok(self, ok: bool) -> bool:
        """Combine the finiteness verdicts of a step over processes (default: unchanged).

        :param ok: Whether this process's loss, gradients and updated weights are finite.
        :return: Whether they are on every process.
        """
        return ok

    def barrier(self) -> None:
        """Wait for all processes (default: nothing)."""

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every process, in rank order (default: ``[obj]``)."""
        return [obj]

    def broadcast(self, obj: Any) -> Any:
        """The main process's ``obj`` on every process (default: ``obj``)."""
        return obj

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        """Called after every epoch with its history record (default: nothing)."""
