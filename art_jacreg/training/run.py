"""One training run of an ART trainer: the :class:`~art_jacreg.training.loop.TrainingLoop` with its hooks.

:func:`run_training` turns a trainer's validated run (epoch batches, number of epochs, validation data, scheduler,
checkpoint file) into a loop run with the trainer's objective: data-parallel under an initialised
``torch.distributed`` process group (:mod:`~art_jacreg.training.distributed`), resumable with a checkpoint file
(:mod:`~art_jacreg.training.checkpoint`). :class:`~art_jacreg.training.art_face.ArtTrainerFace` calls it from
``fit`` and ``fit_generator``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from art_jacreg import _art
from art_jacreg.training import batches, checks, distributed, preflight
from art_jacreg.training.checkpoint import CheckpointHooks
from art_jacreg.training.loop import LoopHooks, TrainingLoop, accuracy

__all__ = ["run_training", "steps_per_epoch"]


def run_training(
    trainer: Any,
    epoch_batches: batches.EpochBatches,
    nb_epochs: int,
    validation: tuple[np.ndarray, np.ndarray] | None,
    scheduler: Any | None,
    verbose: bool | None,
    checkpoint: Path | None = None,
    run: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run the training loop with the trainer's objective and return the history.

    :param trainer: The :class:`~art_jacreg.training.art_face.ArtTrainerFace` (its parameters checked): classifier,
        random streams, objective, checkpoint settings.
    :param epoch_batches: The batches of every epoch (this process's shard for arrays under ``torch.distributed``).
    :param nb_epochs: Number of epochs.
    :param validation: Validated ``(x_val, y_val)`` or ``None``.
    :param scheduler: Optional LR scheduler, stepped after every epoch.
    :param verbose: Progress bar on/off; ``None`` uses ``trainer.verbose``.
    :param checkpoint: Checked checkpoint path, or ``None``.
    :param run: The run description (``data``, ``batch_size``, ``source``) that processes and checkpoints must agree on.
    :return: The history, one record per epoch.
    """
    group = distributed.process_group()
    trainer._log_start(nb_epochs, logging.INFO if group is None or group[0] == 0 else logging.DEBUG)
    forward = _art.logits_function(trainer._classifier)
    device = trainer._classifier.device
    module, optimizer = _art.wrapped_model(trainer._classifier), preflight.optimizer_of(trainer._classifier)
    objective = trainer._objective()
    generators: dict[str, Any] = {"shuffle": trainer._np_rng, "estimator": trainer._torch_gen}
    hooks: LoopHooks = LoopHooks()
    if group is not None:
        by_batch = run is not None and run["source"] == "generator"
        hooks = distributed.DistributedHooks(module, device, shard_batches=by_batch)
        distributed.agree_on_run(hooks, {"nb_epochs": nb_epochs, **(run or {})})
        distributed.synchronise_generators(hooks, trainer._np_rng, trainer._torch_gen)
        objective.generator = generators["rank_estimator"] = distributed.rank_generator(trainer._torch_gen, hooks.rank)
    start, previous = 0, None
    if checkpoint is not None:
        settings = {"trainer": trainer._checkpoint_settings(), **(run or {})}
        hooks = CheckpointHooks(hooks, checkpoint, trainer._classifier.model, optimizer, scheduler, generators,
                                settings, trainer._logger)  # fmt: skip
        start, previous = hooks.resume(nb_epochs)
    trainer._start_objective(objective, nb_epochs, steps_per_epoch(run, group), start)
    epoch_batches = trainer._wrap_epochs(epoch_batches, objective)
    loop = TrainingLoop(
        module,
        optimizer,
        objective,
        forward,
        device,
        hooks=hooks,
        skip_singleton_batches=checks.has_batch_norm(trainer._classifier.model),
        log=trainer._logger,
        description=trainer._loop_description,
    )
    validate = None if validation is None else (lambda: accuracy(forward, loop.module, *validation, device))
    show = trainer.verbose if verbose is None else bool(verbose)
    return loop.run(epoch_batches, nb_epochs, validate, scheduler, show, start, previous)


def steps_per_epoch(run: dict[str, Any] | None, group: tuple[int, int] | None) -> int:
    """Optimizer steps of one epoch on this process (the batches of its shard).

    :param run: The run description (``data``, ``batch_size``, ``source``) of :func:`run_training`.
    :param group: ``(rank, world_size)`` or ``None``.
    :return: The number of steps, at least 1.
    """
    if run is None:
        return 1
    world = 1 if group is None else group[1]
    if run["source"] == "arrays":
        return max(1, math.ceil(math.ceil(run["data"][0] / world) / run["batch_size"]))
    return max(1, math.ceil(run["data"] / run["batch_size"]) // world)
