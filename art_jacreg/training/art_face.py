"""The ART face shared by the package's trainers: parameters, data checks, DDP, checkpoints, the loop run.

:class:`ArtTrainerFace` is the common base of :class:`~art_jacreg.trainer.JacobianRegularizedTrainer` and
:class:`~art_jacreg.certified_trainer.CertifiedJacobianTrainer`. It owns what does not depend on the loss: the
classifier check, :meth:`~ArtTrainerFace.get_params`, the checks of ``seed`` / ``verbose`` / ``nb_epochs`` /
``batch_size``, the seeded random streams, the preparation of array and generator runs (validation, sharding under
``torch.distributed``, preflight checks) and the run itself (:class:`~art_jacreg.training.loop.TrainingLoop` with
the distributed and checkpoint hooks). A subclass supplies the objective (``_objective``), the settings a
checkpoint must match (``_checkpoint_settings``) and its log line (``_log_start``).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np
from art.data_generators import DataGenerator
from art.defences.trainer.trainer import Trainer
from art.estimators.classification.pytorch import PyTorchClassifier

from art_jacreg import _art
from art_jacreg._validate import check_clip_range
from art_jacreg.training import batches, checks, distributed, preflight
from art_jacreg.training.checkpoint import CheckpointHooks, check_checkpoint_path
from art_jacreg.training.loop import LoopHooks, Objective, TrainingLoop, accuracy
from art_jacreg.training.randomness import training_generators

__all__ = ["ArtTrainerFace", "default", "warn_unused"]

logger = logging.getLogger("art_jacreg.trainer")

#: ``fit``'s batch size and number of epochs when neither the call nor the constructor gives them.
DEFAULT_BATCH_SIZE, DEFAULT_NB_EPOCHS = 128, 20


class ArtTrainerFace(Trainer):
    """Base of the package's ART trainers (see the module docstring); not used on its own.

    Subclasses set ``self._classifier`` through ``Trainer.__init__``, the attributes ``seed``, ``verbose``,
    ``nb_epochs`` and ``batch_size``, and implement ``_objective()``, ``_checkpoint_settings()`` and
    ``_log_start(nb_epochs, level)``.
    """

    estimator_requirements: tuple[type, ...] = (PyTorchClassifier,)
    trainer_params: list[str] = []
    #: Title of the progress bar and log lines.
    _loop_description = "Training"
    #: Logger of the runs (the trainer module's).
    _logger = logger
    _classifier: PyTorchClassifier
    seed: int | None
    verbose: bool
    nb_epochs: int | None
    batch_size: int | None

    def get_params(self) -> dict[str, Any]:
        """The trainer's parameters (those in :attr:`trainer_params`) and their current values.

        :return: A dict ``{name: value}``.
        """
        return {name: getattr(self, name) for name in self.trainer_params}

    @classmethod
    def _check_estimator(cls, classifier: Any) -> None:
        """Check the classifier against :attr:`estimator_requirements` and the differentiable-preprocessing rule."""
        if not isinstance(classifier, cls.estimator_requirements):
            names = ", ".join(req.__name__ for req in cls.estimator_requirements)
            raise TypeError(f"`classifier` must be an instance of {names}, got {type(classifier).__name__}.")
        _art.check_pytorch_classifier(classifier, name="classifier")

    def _check_run_params(self) -> None:
        """Validate ``seed``, ``verbose``, ``nb_epochs`` and ``batch_size`` (normalising the integers)."""
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0
        ):
            raise ValueError(f"`seed` must be None or an integer >= 0, got {self.seed!r}.")
        if not isinstance(self.verbose, (bool, np.bool_)):
            raise TypeError(f"`verbose` must be a bool, got {type(self.verbose).__name__}.")
        for name in ("nb_epochs", "batch_size"):
            if getattr(self, name) is not None:
                setattr(self, name, _art.validate_positive_int(getattr(self, name), name))

    def _init_generators(self) -> None:
        """(Re)start the shuffling and estimator streams from ``seed`` (``None``: from the global generators)."""
        self._np_rng, self._torch_gen = training_generators(self.seed)

    def predict(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Predict with the trained classifier (its ``predict``); the model's train/eval mode is left unchanged.

        :param x: Inputs ``(N, *input_shape)``.
        :param kwargs: Passed to the classifier's ``predict`` (e.g. ``batch_size``).
        :return: The classifier's outputs ``(N, nb_classes)``.
        """
        module = _art.wrapped_model(self._classifier)
        with _art.model_mode(module, module.training):
            return self._classifier.predict(x, **kwargs)

    # ------------------------------------------------------------------ runs

    def _fit_arrays(
        self,
        x: np.ndarray,
        y: np.ndarray,
        validation_data: tuple[np.ndarray, np.ndarray] | None,
        batch_size: int | None,
        nb_epochs: int | None,
        scheduler: Any | None,
        verbose: bool | None,
        checkpoint: str | os.PathLike | None,
        kwargs: dict[str, Any],
    ) -> None:
        """The body of ``fit``: validate, build the (sharded) epoch batches, run (the subclass checked its params)."""
        val = batches.check_validation_data(validation_data, self._classifier, batch_size)
        x_arr = _art.validate_x(x, self._classifier, name="x")
        y_idx = _art.validate_labels(y, x_arr.shape[0], self._classifier.nb_classes, name="y")
        batch_size = _art.validate_positive_int(default(batch_size, self.batch_size, DEFAULT_BATCH_SIZE), "batch_size")
        nb_epochs = _art.validate_positive_int(default(nb_epochs, self.nb_epochs, DEFAULT_NB_EPOCHS), "nb_epochs")
        preflight.check_scheduler(scheduler, preflight.optimizer_of(self._classifier))
        preflight.check_trainable(self._classifier)
        preflight.check_batch_size_for_batch_norm(
            self._classifier.model, min(batch_size, x_arr.shape[0]), "batch_size" if batch_size == 1 else "x"
        )
        check_clip_range(x_arr, self._classifier.clip_values, "x", error=False)
        path = None if checkpoint is None else check_checkpoint_path(checkpoint)
        warn_unused(kwargs, "fit")
        group = distributed.process_group()
        if group is None:
            source = batches.array_batches(x_arr, y_idx, batch_size, self._np_rng)
        else:
            source = distributed.sharded_array_batches(x_arr, y_idx, batch_size, self._np_rng, *group)
        run = {"data": [int(n) for n in x_arr.shape], "batch_size": batch_size, "source": "arrays"}
        self._train(source, nb_epochs, val, scheduler, verbose, path, run)

    def _fit_generator(
        self,
        generator: DataGenerator,
        nb_epochs: int | None,
        scheduler: Any | None,
        validation_data: tuple[np.ndarray, np.ndarray] | None,
        verbose: bool | None,
        checkpoint: str | os.PathLike | None,
        kwargs: dict[str, Any],
    ) -> None:
        """The body of ``fit_generator`` (the subclass checked its params)."""
        if not isinstance(generator, DataGenerator):
            raise TypeError(
                f"`generator` must be an art.data_generators.DataGenerator, got {type(generator).__name__}."
            )
        epoch_batches = batches.generator_batches(generator, self._classifier)
        nb_epochs = _art.validate_positive_int(default(nb_epochs, self.nb_epochs, DEFAULT_NB_EPOCHS), "nb_epochs")
        val = batches.check_validation_data(validation_data, self._classifier)
        preflight.check_scheduler(scheduler, preflight.optimizer_of(self._classifier))
        preflight.check_trainable(self._classifier)
        preflight.check_batch_size_for_batch_norm(self._classifier.model, generator.batch_size, "generator.batch_size")
        path = None if checkpoint is None else check_checkpoint_path(checkpoint)
        warn_unused(kwargs, "fit_generator")
        run = {"data": int(generator.size), "batch_size": int(generator.batch_size), "source": "generator"}
        self._train(epoch_batches, nb_epochs, val, scheduler, verbose, path, run)

    def _objective(self) -> Objective:
        raise NotImplementedError

    def _checkpoint_settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def _log_start(self, nb_epochs: int, level: int) -> None:
        raise NotImplementedError

    def _start_objective(self, objective: Objective, nb_epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        """Tell the objective the run's length and where it starts (default: nothing; schedules use it)."""

    def _wrap_epochs(self, epoch_batches: batches.EpochBatches, objective: Objective) -> batches.EpochBatches:
        """The epochs the loop runs (default: ``epoch_batches``; a subclass may act at the start of each epoch)."""
        return epoch_batches

    def _train(
        self,
        epoch_batches: batches.EpochBatches,
        nb_epochs: int,
        validation: tuple[np.ndarray, np.ndarray] | None,
        scheduler: Any | None,
        verbose: bool | None,
        checkpoint: Path | None = None,
        run: dict[str, Any] | None = None,
    ) -> None:
        """Run the training loop with the subclass's objective (data-parallel under an initialised process group,
        resumable with a checkpoint file); fills :attr:`history`.
        """
        self.history: list[dict[str, Any]] = []
        group = distributed.process_group()
        self._log_start(nb_epochs, logging.INFO if group is None or group[0] == 0 else logging.DEBUG)
        forward = _art.logits_function(self._classifier)
        device = self._classifier.device
        module, optimizer = _art.wrapped_model(self._classifier), preflight.optimizer_of(self._classifier)
        objective = self._objective()
        generators: dict[str, Any] = {"shuffle": self._np_rng, "estimator": self._torch_gen}
        hooks: LoopHooks = LoopHooks()
        if group is not None:
            by_batch = run is not None and run["source"] == "generator"
            hooks = distributed.DistributedHooks(module, device, shard_batches=by_batch)
            distributed.agree_on_run(hooks, {"nb_epochs": nb_epochs, **(run or {})})
            distributed.synchronise_generators(hooks, self._np_rng, self._torch_gen)
            objective.generator = generators["rank_estimator"] = distributed.rank_generator(  # type: ignore[attr-defined]
                self._torch_gen, hooks.rank
            )
        start, previous = 0, None
        if checkpoint is not None:
            settings = {"trainer": self._checkpoint_settings(), **(run or {})}
            hooks = CheckpointHooks(hooks, checkpoint, self._classifier.model, optimizer, scheduler, generators,
                                    settings, self._logger)  # fmt: skip
            start, previous = hooks.resume(nb_epochs)
        self._start_objective(objective, nb_epochs, steps_per_epoch(run, group), start)
        epoch_batches = self._wrap_epochs(epoch_batches, objective)
        loop = TrainingLoop(
            module,
            optimizer,
            objective,
            forward,
            device,
            hooks=hooks,
            skip_singleton_batches=checks.has_batch_norm(self._classifier.model),
            log=self._logger,
            description=self._loop_description,
        )
        validate = None if validation is None else (lambda: accuracy(forward, loop.module, *validation, device))
        show = self.verbose if verbose is None else bool(verbose)
        self.history = loop.run(epoch_batches, nb_epochs, validate, scheduler, show, start, previous)


def steps_per_epoch(run: dict[str, Any] | None, group: tuple[int, int] | None) -> int:
    """Optimizer steps of one epoch on this process (the batches of its shard).

    :param run: The run description (``data``, ``batch_size``, ``source``) of :meth:`ArtTrainerFace._train`.
    :param group: ``(rank, world_size)`` or ``None``.
    :return: The number of steps, at least 1.
    """
    if run is None:
        return 1
    world = 1 if group is None else group[1]
    if run["source"] == "arrays":
        return max(1, math.ceil(math.ceil(run["data"][0] / world) / run["batch_size"]))
    return max(1, math.ceil(run["data"] / run["batch_size"]) // world)


def default(value: Any, constructor_value: Any, fallback: int) -> Any:
    """The call argument if given, else the constructor's value if given, else ``fallback``."""
    if value is not None:
        return value
    return fallback if constructor_value is None else constructor_value


def warn_unused(kwargs: dict[str, Any], where: str) -> None:
    """Log one warning naming the keyword arguments ``where`` ignores (nothing when there are none)."""
    if kwargs:
        logging.getLogger("art_jacreg.trainer").warning("%s ignores the keyword arguments %s.", where, sorted(kwargs))
