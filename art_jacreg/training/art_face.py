"""The ART face shared by the package's trainers: parameters, ``fit`` / ``fit_generator``, data checks, predict.

:class:`ArtTrainerFace` is the common base of :class:`~art_jacreg.trainer.JacobianRegularizedTrainer` and
:class:`~art_jacreg.certified_trainer.CertifiedJacobianTrainer`. It owns what does not depend on the loss: the
classifier check, :meth:`~ArtTrainerFace.get_params` / :meth:`~ArtTrainerFace.set_params` (validated, atomic), the
checks of ``seed`` / ``verbose`` / ``nb_epochs`` / ``batch_size``, the seeded random streams, and
:meth:`~ArtTrainerFace.fit` / :meth:`~ArtTrainerFace.fit_generator`: validation, sharding under
``torch.distributed`` and preflight checks, then the run (:func:`~art_jacreg.training.run.run_training`). A
subclass supplies its parameter checks (``_check_params``), the objective (``_objective``) and its log line
(``_log_start``), and may reset defaults in ``_prepare_params`` or act per run and per epoch
(``_start_objective``, ``_wrap_epochs``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
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
from art_jacreg.training import batches, distributed, preflight
from art_jacreg.training.checkpoint import check_checkpoint_path
from art_jacreg.training.loop import Objective
from art_jacreg.training.lr_schedule import default_scheduler, learning_rates_restored
from art_jacreg.training.randomness import training_generators
from art_jacreg.training.run import run_training

__all__ = ["ArtTrainerFace", "default", "warn_unused"]

logger = logging.getLogger("art_jacreg.trainer")

#: The parameters that do not change what a run optimises (a checkpoint may be resumed with other values).
_RUN_ONLY_PARAMS = ("seed", "verbose", "nb_epochs", "batch_size")

#: ``fit``'s batch size and number of epochs when neither the call nor the constructor gives them.
DEFAULT_BATCH_SIZE, DEFAULT_NB_EPOCHS = 128, 20


class ArtTrainerFace(Trainer):
    """Base of the package's ART trainers (see the module docstring); not used on its own.

    Subclasses set ``self._classifier`` through ``Trainer.__init__``, the attributes ``seed``, ``verbose``,
    ``nb_epochs`` and ``batch_size``, and implement ``_check_params()``, ``_objective()`` and
    ``_log_start(nb_epochs, level)``.
    """

    estimator_requirements: tuple[type, ...] = (PyTorchClassifier,)
    trainer_params: list[str] = []
    #: Learning-rate schedule of a ``fit`` without a ``scheduler`` (:data:`~.lr_schedule.LR_SCHEDULES`); a trainer
    #: may expose it as a parameter.
    lr_schedule: str | None = "constant"
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

    def set_params(self, **kwargs: Any) -> None:
        """Change parameters listed in :attr:`trainer_params`, validated as at construction.

        On an invalid value nothing is changed. A new ``seed`` restarts the random streams. Parameters whose
        default depends on ``norm`` (constructed with ``None``) follow a new ``norm``.

        :param kwargs: ``name=value`` pairs.
        :raises ValueError: On an unknown name or an invalid value (``TypeError`` for a wrong type).
        """
        unknown = sorted(set(kwargs) - set(self.trainer_params))
        if unknown:
            raise ValueError(f"Unexpected parameter(s) {unknown}; the trainer's parameters are {self.trainer_params}.")
        previous = self.get_params(), {name: copy.copy(getattr(self, name)) for name in self._defaults_state}
        self._prepare_params(kwargs)
        for name, value in kwargs.items():
            setattr(self, name, value)
        try:
            self._check_params()
        except (TypeError, ValueError):
            for name, value in (*previous[0].items(), *previous[1].items()):
                setattr(self, name, value)
            raise
        if "seed" in kwargs:
            self._reseed()

    #: Private attributes recording which defaults were resolved; restored with the parameters by :meth:`set_params`.
    _defaults_state: tuple[str, ...] = ()

    def _prepare_params(self, kwargs: dict[str, Any]) -> None:
        """Before :meth:`set_params` applies ``kwargs``: reset the defaults they change (default: nothing)."""

    def _check_params(self) -> None:
        """Validate and normalise the parameters (construction, :meth:`set_params` and every fit)."""
        raise NotImplementedError

    def _reseed(self) -> None:
        """Restart everything that depends on ``seed`` (default: the random streams)."""
        self._init_generators()

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

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        batch_size: int | None = None,
        nb_epochs: int | None = None,
        scheduler: Any | None = None,
        verbose: bool | None = None,
        checkpoint: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        """Train the classifier with the trainer's loss on arrays.

        The data are reshuffled every epoch (seeded by ``seed``); the last batch may be smaller. The caller's arrays
        are not modified. ART's positional ``fit(x, y, batch_size, nb_epochs)`` is refused with a message: pass
        ``batch_size`` and ``nb_epochs`` by keyword.

        Under ``torch.distributed`` (an initialised process group, e.g. a script run by ``torchrun``) the training is
        data-parallel: every rank calls ``fit`` with the same ``x`` and ``y``, takes its shard of each epoch's
        permutation (the ``DistributedSampler`` rule: padded by wrapping to a multiple of the number of ranks, then
        rank-strided), and ``batch_size`` is the batch of *each rank* (global batch = ``batch_size`` x ranks). The
        model runs inside ``DistributedDataParallel`` for the run and is a plain module again afterwards, with the
        same weights on every rank; :attr:`history` holds the global means. See the guide page "Multi-GPU and
        multi-node training".

        :param x: Training inputs ``(N, *input_shape)`` in raw units (before ``preprocessing``); values outside the
            classifier's ``clip_values`` give a warning.
        :param y: Labels, class indices ``(N,)`` or one-hot ``(N, nb_classes)``.
        :param validation_data: Optional ``(x_val, y_val)``; its accuracy is logged and stored in :attr:`history`.
        :param batch_size: Mini-batch size (``>= 1``); ``None`` uses the constructor's ``batch_size``, else 128.
        :param nb_epochs: Number of epochs (``>= 1``); ``None`` uses the constructor's ``nb_epochs``, else 20.
        :param scheduler: Optional LR scheduler of the classifier's optimizer; ``step()`` is called once after every
            epoch (``ReduceLROnPlateau`` gets the epoch's mean training loss).
        :param verbose: Progress bar on/off; ``None`` uses the constructor's ``verbose``.
        :param checkpoint: Optional checkpoint file. The model, optimizer, scheduler, random states, epoch and history
            are saved into it atomically after every epoch; when it exists, training resumes after its last epoch
            (the run then ends with the weights an uninterrupted run would have, bit for bit, unless the trainer's
            documentation says otherwise). A file of another run (other model, settings, data size or number of
            processes) is refused with a ``ValueError``.
        :param kwargs: Accepted for ART compatibility; ignored with a warning.
        :raises FloatingPointError: If the loss, a gradient or the updated weights become NaN/inf; the weights and
            optimizer state of the last good step are restored first.
        """
        self._check_params()
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

    def fit_generator(
        self,
        generator: DataGenerator,
        nb_epochs: int | None = None,
        scheduler: Any | None = None,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        verbose: bool | None = None,
        checkpoint: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> None:
        """Train the classifier with the trainer's loss on batches from an ART data generator.

        An epoch is ``ceil(generator.size / generator.batch_size)`` calls of ``generator.get_batch()`` (as in ART's
        trainers); shuffling is the generator's (e.g. the ``DataLoader``'s) business. The batch size is the
        generator's (the constructor's ``batch_size`` does not apply).

        Under ``torch.distributed`` each rank draws the epoch's batches from its generator and trains on batches
        ``rank, rank + world_size, ...`` (the same number on every rank: the last ``n mod world_size`` batches are
        dropped); seed the generators identically on all ranks for an exact partition. The batch size of each rank
        is the generator's.

        :param generator: An ART :class:`~art.data_generators.DataGenerator` (e.g. ``PyTorchDataGenerator``) yielding
            ``(x_batch, y_batch)`` with labels as indices or one-hot.
        :param nb_epochs: Number of epochs (``>= 1``); ``None`` uses the constructor's ``nb_epochs``, else 20.
        :param scheduler: Optional LR scheduler; ``step()`` once after every epoch.
        :param validation_data: Optional ``(x_val, y_val)``.
        :param verbose: Progress bar on/off; ``None`` uses the constructor's ``verbose``.
        :param checkpoint: Optional checkpoint file, as in :meth:`fit`. The generator's own position and shuffling
            state are not saved: a resumed run continues bit-identically only with a generator that yields the same
            batches in every run (e.g. a ``DataLoader`` whose shuffling is reseeded per epoch).
        :param kwargs: Accepted for ART compatibility; ignored with a warning.
        :raises FloatingPointError: As in :meth:`fit`.
        """
        self._check_params()
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
        """The settings a checkpoint file must match to be resumed: the parameters that change what is optimised."""
        return {name: getattr(self, name) for name in self.trainer_params if name not in _RUN_ONLY_PARAMS}

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
        checkpoint: Path | None,
        run: dict[str, Any],
    ) -> None:
        """Run the training (:func:`~art_jacreg.training.run.run_training`); fills :attr:`history`.

        Without a ``scheduler`` the trainer's built-in schedule (its ``lr_schedule`` parameter, if it has one) drives
        the learning rate, and the optimizer's learning rates are given back afterwards.
        """
        self.history = []
        builtin = (self.lr_schedule or "constant") if scheduler is None else "constant"
        optimizer = preflight.optimizer_of(self._classifier)
        with contextlib.nullcontext() if builtin == "constant" else learning_rates_restored(optimizer):
            if builtin != "constant":
                scheduler = default_scheduler(builtin, optimizer, nb_epochs)
            self.history = run_training(self, epoch_batches, nb_epochs, validation, scheduler, verbose, checkpoint, run)


def default(value: Any, constructor_value: Any, fallback: int) -> Any:
    """The call argument if given, else the constructor's value if given, else ``fallback``."""
    if value is not None:
        return value
    return fallback if constructor_value is None else constructor_value


def warn_unused(kwargs: dict[str, Any], where: str) -> None:
    """Log one warning naming the keyword arguments ``where`` ignores (nothing when there are none)."""
    if kwargs:
        logging.getLogger("art_jacreg.trainer").warning("%s ignores the keyword arguments %s.", where, sorted(kwargs))
