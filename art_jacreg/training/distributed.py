"""Data-parallel training on ``torch.distributed``: the loop hooks of a run under ``torchrun`` (DDP).

When a process group is initialised (:func:`process_group`), the trainers run :class:`~art_jacreg.training.loop.
TrainingLoop` with :class:`DistributedHooks`:

* the model runs inside ``torch.nn.parallel.DistributedDataParallel`` (built for the run around a reference to the
  caller's module and dropped afterwards, so the caller's model is left a plain module), which broadcasts rank 0's
  weights at the start and averages the gradients of the one ordinary ``backward()`` of every step;
* each rank trains on its shard of every epoch (:func:`sharded_array_batches`: the ``DistributedSampler`` rule, or
  :meth:`DistributedHooks.shard` for batches from a generator);
* the history sums and the finiteness flag of every step are all-reduced, so every rank records the same global
  means and all ranks roll back together;
* only rank 0 shows the progress bar, logs epochs and writes checkpoints.

The Jacobian term of the objective is taken with ``torch.autograd.grad(..., create_graph=True)`` inside the forward
of the step and enters the one ``backward()`` that DDP all-reduces (DDP does not all-reduce gradients taken with
``autograd.grad``, and ``backward(create_graph=True)`` through DDP is unsupported: pytorch issues #47562, #63812).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from art_jacreg.training.loop import Batches, Forward, LoopHooks

__all__ = [
    "process_group",
    "DistributedHooks",
    "sharded_array_batches",
    "shard_indices",
    "rank_generator",
    "agree_on_run",
    "synchronise_generators",
    "init_from_torchrun",
]


def process_group() -> tuple[int, int] | None:
    """``(rank, world_size)`` of the default process group when one is initialised, else ``None``.

    :return: The rank and the number of processes, or ``None`` outside ``torch.distributed``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.get_rank(), dist.get_world_size()


def init_from_torchrun(timeout_s: float = 1800.0) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): NCCL on ``cuda:LOCAL_RANK`` (made the current device) when CUDA
    is available, else gloo on the CPU. Nothing is done when a group is already initialised.

    :param timeout_s: Seconds a collective may wait for the other ranks before failing (so a crashed rank stops the
        others instead of leaving them waiting).
    :return: The device this rank trains on.
    :raises RuntimeError: If the environment lacks torchrun's variables.
    """
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(
            f"Distributed training needs torchrun's environment ({', '.join(missing)} not set); start the command "
            "with `torchrun --nproc_per_node N ...`."
        )
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return device


def shard_indices(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The share of this rank in an epoch's sample order, by the rule of ``torch.utils.data.DistributedSampler``
    (``drop_last=False``): the order is padded by wrapping around to a multiple of ``world_size`` and rank ``r``
    takes the positions ``r, r + world_size, ...``, so all shards have ``ceil(N / world_size)`` samples.

    :param order: The epoch's permutation of the sample indices (the same on every rank).
    :param rank: This process's rank.
    :param world_size: Number of processes.
    :return: The indices this rank trains on, in order.
    """
    size = -(-order.shape[0] // world_size) * world_size
    padded = np.resize(order, size)  # np.resize repeats the array from its start: DistributedSampler's padding
    return padded[rank::world_size]


def sharded_array_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator, rank: int, world_size: int
) -> Any:
    """Batches of ``batch_size`` (per rank) from this rank's shard (:func:`shard_indices`) of a fresh permutation
    drawn from ``rng`` every epoch (``rng`` must be in the same state on every rank).

    :param x: Validated inputs.
    :param y: Validated int64 labels.
    :param batch_size: Batch size of each rank.
    :param rng: The shuffling generator.
    :param rank: This process's rank.
    :param world_size: Number of processes.
    :return: ``epoch_batches(epoch)``.
    """

    def epoch_batches(epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = shard_indices(rng.permutation(x.shape[0]), rank, world_size)
        for start in range(0, order.shape[0], batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

    return epoch_batches


def rank_generator(generator: torch.Generator, rank: int) -> torch.Generator:
    """A CPU generator for this rank's random estimator draws, seeded from one draw of ``generator`` (which is in
    the same state on every rank) and the rank, so the ranks draw independent projections.

    :param generator: The trainer's estimator generator (advanced by one draw).
    :param rank: This process's rank.
    :return: A new generator.
    """
    base = int(torch.randint(0, 2**62, (1,), generator=generator))
    seed = np.random.SeedSequence([base, rank]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)
    out = torch.Generator(device="cpu")
    out.manual_seed(int(seed))
    return out


def agree_on_run(hooks: DistributedHooks, settings: dict[str, Any]) -> None:
    """Check that every rank starts the same run (else the ranks would wait for each other forever).

    :param hooks: The run's hooks.
    :param settings: Plain values that must be equal on all ranks (number of epochs, batch size, data size).
    :raises ValueError: On every rank, naming the first setting that differs and the values of the ranks.
    """
    everyone = hooks.gather(settings)
    for key in settings:
        values = [s.get(key) for s in everyone]
        if any(v != values[0] for v in values):
            raise ValueError(
                f"The ranks of the process group call fit with different {key}: {values} (by rank); every rank must "
                "call it with the same data and settings."
            )


def synchronise_generators(hooks: DistributedHooks, *generators: np.random.Generator | torch.Generator) -> None:
    """Give every rank rank 0's generator states (the shuffling must be the same permutation on all ranks, even
    when the seed was drawn from unseeded global generators).

    :param hooks: The run's hooks.
    :param generators: Numpy or torch generators, set in place.
    """
    states = [g.get_state() if isinstance(g, torch.Generator) else g.bit_generator.state for g in generators]
    for gen, state in zip(generators, hooks.broadcast(states), strict=True):
        if isinstance(gen, torch.Generator):
            gen.set_state(state)
        else:
            gen.bit_generator.state = state


class _ForwardModule(torch.nn.Module):
    """The module DDP wraps: it owns ``module`` (so DDP sees its parameters) and runs ``forward``, which calls it."""

    def __init__(self, module: torch.nn.Module, forward: Forward) -> None:
        super().__init__()
        self.inner = module
        self._forward = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)


class DistributedHooks(LoopHooks):
    """The loop hooks of a data-parallel run in the initialised default process group.

    :param module: The trained module (its parameters are those of the forward function).
    :param device: The device of the model (``classifier.device``); CUDA devices need the NCCL (or gloo) backend and
        run DDP with ``device_ids=[device]``, CPU needs gloo.
    :param shard_batches: Whether :meth:`shard` strides the epoch's batches over the ranks (for batches from a
        generator); ``False`` when the batch source is already sharded (:func:`sharded_array_batches`).
    :raises RuntimeError: If no process group is initialised.
    :raises ValueError: If the backend cannot run on ``device`` (NCCL with a CPU model).
    """

    def __init__(self, module: torch.nn.Module, device: torch.device | str, shard_batches: bool = False) -> None:
        group = process_group()
        if group is None:
            raise RuntimeError("DistributedHooks need an initialised torch.distributed process group.")
        self.rank, self.world_size = group
        self.module = module
        self.device = torch.device(device)
        self.shard_batches = shard_batches
        self.is_main = self.rank == 0
        backend = str(dist.get_backend())
        if self.device.type == "cpu" and "gloo" not in backend:
            raise ValueError(
                f"The process group uses the {backend!r} backend, which cannot train a model on the CPU "
                f"(`classifier.device` is {self.device}); initialise it with backend='gloo' (or 'cpu:gloo,cuda:nccl')."
            )
        self._ddp: torch.nn.parallel.DistributedDataParallel | None = None

    def wrap_forward(self, forward: Forward) -> Forward:
        """``forward`` run inside ``DistributedDataParallel`` (which first broadcasts rank 0's weights and buffers).

        :param forward: The plain forward function (it calls :attr:`module`).
        :return: The DDP module, called like ``forward``.
        """
        device_ids = [self.device] if self.device.type == "cuda" else None
        self._ddp = torch.nn.parallel.DistributedDataParallel(
            _ForwardModule(self.module, forward), device_ids=device_ids
        )
        return self._ddp

    def shard(self, batches: Batches, epoch: int) -> Batches:
        """With ``shard_batches``: batches ``rank, rank + world_size, ...`` of the epoch, and the same number on every
        rank (the last ``n mod world_size`` batches are dropped); otherwise ``batches`` unchanged.

        :param batches: The epoch's batches (the same sequence on every rank for an exact partition).
        :param epoch: The epoch.
        :return: This rank's batches.
        """
        if not self.shard_batches:
            return batches
        return self._strided(batches)

    def _strided(self, batches: Batches) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        for batch in batches:
            pending.append(batch)
            if len(pending) == self.world_size:
                yield pending[self.rank]
                pending = []

    def reduce_sums(self, sums: torch.Tensor) -> torch.Tensor:
        """The sums of all ranks (all-reduce).

        :param sums: This rank's history sums.
        :return: Their sum over the ranks.
        """
        total = sums.clone()
        dist.all_reduce(total)
        return total

    def all_ok(self, ok: bool) -> bool:
        """Whether the step was finite on every rank (one all-reduce of a flag), so all ranks roll back together.

        :param ok: This rank's verdict.
        :return: The verdict of all ranks.
        """
        bad = torch.tensor([0.0 if ok else 1.0], device=self.device)
        dist.all_reduce(bad)
        return bool(bad.item() == 0)

    def barrier(self) -> None:
        """Wait for all ranks."""
        dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (``all_gather_object``).

        :param obj: A picklable object.
        :return: The list over the ranks.
        """
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank.

        :param obj: A picklable object (only rank 0's is used).
        :return: Rank 0's object.
        """
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def finish(self) -> None:
        """Drop the DDP wrapper (its gradient hooks go with it); the module is a plain module again."""
        self._ddp = None
