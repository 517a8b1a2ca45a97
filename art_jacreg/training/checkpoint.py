"""Resumable training: a checkpoint file written atomically at the end of every epoch, and resuming from it.

:class:`CheckpointHooks` wrap the hooks of a run (one process or :class:`~art_jacreg.training.distributed.
DistributedHooks`). After every epoch they save the model's ``state_dict``, the optimizer's and the scheduler's
state, the random states (Python's ``random``, numpy's and torch's global generators, CUDA's when initialised, and
the trainer's own generators), the epoch and the history, in one file replaced atomically
(:func:`art_jacreg._io.atomic_torch_save`): a run killed at any moment leaves the last complete checkpoint. When
the file exists at the start of a run, :meth:`CheckpointHooks.resume` checks that it belongs to this run (format,
parameter names and shapes, optimizer and scheduler kinds, trainer settings, data size, number of processes),
restores everything and the run continues with the next epoch; the weights it ends with are bit-identical to those
of an uninterrupted run.

Under ``torch.distributed`` the random states of every rank are gathered into the file, rank 0 writes it (then all
ranks wait at a barrier) and, on resume, rank 0 reads it and broadcasts its content, so the file only needs to be on
rank 0's machine. Files are read with ``torch.load(weights_only=True)``: loading never runs code from the file.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from art_jacreg._io import atomic_torch_save, check_output_file
from art_jacreg.training.loop import Batches, Forward, LoopHooks

__all__ = ["CheckpointHooks", "FORMAT", "check_checkpoint_path"]

#: Identifies the package's training checkpoints (and their layout version).
FORMAT = "art-jacreg training checkpoint v1"

Generator = np.random.Generator | torch.Generator


def check_checkpoint_path(path: Any, name: str = "checkpoint") -> Path:
    """Validate a checkpoint path argument: a non-empty ``str`` or ``os.PathLike`` (its folder is checked by
    :class:`CheckpointHooks`, on rank 0 only under ``torch.distributed``).

    :param path: The argument.
    :param name: Its name in messages.
    :return: The path.
    :raises TypeError: If it is not a path.
    """
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise TypeError(f"`{name}` must be None or a file path (str or os.PathLike), got {path!r}.")
    return Path(path)


def _generator_state(gen: Generator) -> Any:
    return gen.get_state() if isinstance(gen, torch.Generator) else gen.bit_generator.state


def _set_generator_state(gen: Generator, state: Any) -> None:
    if isinstance(gen, torch.Generator):
        gen.set_state(state)
    else:
        gen.bit_generator.state = state


def _random_states(generators: dict[str, Generator]) -> dict[str, Any]:
    """The random states of this process: global generators and the run's own ones (only picklable plain types)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "generators": {name: _generator_state(gen) for name, gen in generators.items()},
    }
    return states


def _restore_random_states(states: dict[str, Any], generators: dict[str, Generator]) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(states["numpy"])
    numpy_state["state"] = dict(numpy_state["state"], key=np.asarray(numpy_state["state"]["key"], dtype=np.uint32))
    np.random.set_state(numpy_state)
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    for name, gen in generators.items():
        _set_generator_state(gen, states["generators"][name])


class CheckpointHooks(LoopHooks):
    """Hooks that save a checkpoint after every epoch and resume from an existing one; other hooks are delegated
    to ``inner``.

    :param inner: The hooks of the run (one process, or distributed).
    :param path: The checkpoint file.
    :param model: The model whose ``state_dict`` is saved (the caller's module).
    :param optimizer: Its optimizer.
    :param scheduler: The LR scheduler of the run, or ``None``.
    :param generators: The run's own random generators by name (numpy or torch), saved and restored.
    :param settings: Settings of the run that a resumed run must share (trainer parameters, batch size, data size):
        plain values compared for equality.
    :param log: Logger of the run.
    :raises ValueError: On every rank, if rank 0 cannot write the file (a directory, a missing or read-only folder).
    """

    def __init__(
        self,
        inner: LoopHooks,
        path: str | os.PathLike,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None,
        generators: dict[str, Generator],
        settings: dict[str, Any],
        log: logging.Logger | None = None,
    ) -> None:
        self.inner = inner
        self.path = Path(path)
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.generators = generators
        self.log = log if log is not None else logging.getLogger(__name__)
        self.is_main = inner.is_main
        self.world_size = int(getattr(inner, "world_size", 1))
        problem = None
        if self.is_main:  # only rank 0 writes; the others need not see the folder (other nodes)
            try:
                check_output_file(self.path, "`checkpoint`")
            except ValueError as err:
                problem = str(err)
        problem = inner.broadcast(problem)  # every rank raises together instead of waiting for rank 0
        if problem is not None:
            raise ValueError(problem)
        self.identity = {
            "parameters": {name: list(t.shape) for name, t in model.state_dict().items()},
            "optimizer": type(optimizer).__name__,
            "scheduler": None if scheduler is None else type(scheduler).__name__,
            "world_size": self.world_size,
            **settings,
        }
        self._history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ resuming

    def resume(self, nb_epochs: int) -> tuple[int, list[dict[str, Any]]]:
        """Restore the run from the checkpoint file if it exists (on rank 0; broadcast to the others).

        :param nb_epochs: The number of epochs the run trains in total.
        :return: ``(epochs already trained, their history)``; ``(0, [])`` when there is no file.
        :raises ValueError: If the file is not a checkpoint of this package, does not match this run (the message
            names the file and the first difference), or has more epochs than ``nb_epochs``.
        """
        payload: Any = None
        error: str | None = None
        if self.is_main and self.path.exists():
            try:
                payload = self._load()
            except ValueError as err:
                error = str(err)
        payload, error = self.inner.broadcast((payload, error))
        if error is not None:
            raise ValueError(error)
        if payload is None:
            self._history = []
            return 0, []
        epoch = int(payload["epoch"])
        if epoch > nb_epochs:
            raise ValueError(
                f"The checkpoint {self.path} already holds {epoch} epochs, more than nb_epochs={nb_epochs}; ask for "
                f"at least {epoch} epochs or use another checkpoint file."
            )
        rank = int(getattr(self.inner, "rank", 0))
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        _restore_random_states(payload["random"][rank], self.generators)
        self._history = list(payload["history"])
        if self.is_main:
            self.log.info("Resumed from %s after epoch %d of %d.", self.path, epoch, nb_epochs)
        return epoch, list(self._history)

    def _load(self) -> dict[str, Any]:
        """Read and check the file against this run."""
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unreadable content: a clear message naming the file
            raise ValueError(
                f"The checkpoint {self.path} cannot be read ({type(err).__name__}: {err}); delete it to start afresh."
            ) from err
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(
                f"{self.path} is not an art-jacreg training checkpoint (expected format {FORMAT!r}); give another "
                "`checkpoint` path."
            )
        saved = payload["identity"]
        for key in sorted(set(self.identity) | set(saved)):
            if saved.get(key) != self.identity.get(key):
                if key == "parameters":
                    difference = _parameter_difference(saved.get(key, {}), self.identity[key])
                else:
                    difference = f"{key} is {saved.get(key)!r} in the file but {self.identity.get(key)!r} in this run"
                raise ValueError(
                    f"The checkpoint {self.path} belongs to another run: {difference}. Delete it or give another "
                    "`checkpoint` path to start a new run."
                )
        return payload

    # ------------------------------------------------------------------ saving

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        """Save the checkpoint of ``epoch`` (random states gathered from all ranks, written by rank 0)."""
        self._history.append(record)
        states = self.inner.gather(_random_states(self.generators))
        if self.is_main:
            payload = {
                "format": FORMAT,
                "identity": self.identity,
                "epoch": epoch,
                "history": self._history,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "random": states,
            }
            atomic_torch_save(payload, self.path)
        self.inner.barrier()
        self.inner.on_epoch_end(epoch, record)

    # ------------------------------------------------------------------ delegated

    def wrap_forward(self, forward: Forward) -> Forward:  # noqa: D102
        return self.inner.wrap_forward(forward)

    def finish(self) -> None:  # noqa: D102
        self.inner.finish()

    def shard(self, batches: Batches, epoch: int) -> Batches:  # noqa: D102
        return self.inner.shard(batches, epoch)

    def reduce_sums(self, sums: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.inner.reduce_sums(sums)

    def all_ok(self, ok: bool) -> bool:  # noqa: D102
        return self.inner.all_ok(ok)

    def barrier(self) -> None:  # noqa: D102
        self.inner.barrier()

    def gather(self, obj: Any) -> list[Any]:  # noqa: D102
        return self.inner.gather(obj)

    def broadcast(self, obj: Any) -> Any:  # noqa: D102
        return self.inner.broadcast(obj)


def _parameter_difference(saved: dict[str, list[int]], current: dict[str, list[int]]) -> str:
    """The first difference between two ``{name: shape}`` maps, in words."""
    for name in sorted(set(saved) | set(current)):
        if name not in saved:
            return f"the model has {name!r}, which the file lacks"
        if name not in current:
            return f"the file has {name!r}, which the model lacks"
        if saved[name] != current[name]:
            return f"{name!r} has shape {tuple(saved[name])} in the file but {tuple(current[name])} in the model"
    return "the model's parameters differ"
