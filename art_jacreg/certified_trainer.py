r"""Certified training of an ART :class:`PyTorchClassifier`: train for the certificates the reporter proves.

The trainer minimises, per mini-batch, cross-entropy on *worst-case logits*
``z_j = f_y(x) - low_j(x, eps)``, where ``low_j`` is a sound lower bound (given exact layer norms) of the margin
``f_y - f_j`` over the threat ball: GloRo-style global Lipschitz margins (Leino et al. 2021) for l2, interval bound
propagation (Gowal et al. 2018) for l-inf, or the package's local bounds made differentiable. The derivation and
why the final certificate is sound whatever the training did are on the theory page ("Certified training"). This
module is the ART ``Trainer`` face; the objective is :mod:`art_jacreg.training.certified_objective`, the bounds
:mod:`art_jacreg.certify.objectives` and the loop, DDP and checkpoints are shared with
:class:`~art_jacreg.trainer.JacobianRegularizedTrainer` (:mod:`art_jacreg.training.art_face`).

| Paper link: https://arxiv.org/abs/2102.08452 (Leino, Wang and Fredrikson 2021, globally-robust networks)
| Paper link: https://arxiv.org/abs/1810.12715 (Gowal et al. 2018, interval bound propagation)
| Paper link: https://arxiv.org/abs/2412.12449 (Wu and Li 2024, Jacobian regularization)
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from art.estimators.classification.pytorch import PyTorchClassifier

from art_jacreg import _art
from art_jacreg._validate import validate_real
from art_jacreg.certify.graph import UnsupportedOperationError
from art_jacreg.certify.objectives import BOUNDS, CertifiedMargins
from art_jacreg.training.art_face import ArtTrainerFace, warn_unused
from art_jacreg.training.certified_objective import CertifiedObjective, EpsSchedule
from art_jacreg.training.lr_schedule import LR_SCHEDULES
from art_jacreg.training.objectives import JacobianRegularizedObjective, check_jacobian_settings, cross_entropy_like

logger = logging.getLogger(__name__)

__all__ = ["CertifiedJacobianTrainer", "SCHEDULE_DEFAULTS"]

#: Schedule defaults per norm (measured: guide page "Choosing norm and reg_weight"): eps ramp fraction, final and
#: initial clean-loss weight, training-eps factor.
SCHEDULE_DEFAULTS: dict[float, dict[str, Any]] = {
    2.0: {"ramp": 0.25, "kappa": 0.0, "kappa_start": 0.0, "train_eps_factor": 1.0, "lr_schedule": "cosine"},
    math.inf: {"ramp": 0.5, "kappa": 0.0, "kappa_start": 1.0, "train_eps_factor": 1.3, "lr_schedule": "step"},
}
LOSSES = ("ce", "bottom")


class CertifiedJacobianTrainer(ArtTrainerFace):
    """Train a PyTorch classifier so that :meth:`JacobianBoundReporter.certify` certifies it at ``eps``.

    Loss per batch (``t`` the step): ``kappa_t CE(f(x), y) + (1 - kappa_t) CE(z, y) + reg_weight * mean R(x)`` with
    ``z_j = f_y - low_j(x, eps_t)`` (``z_y = f_y``) and ``R`` the paper's ``||J||_F^2`` (``norm=2``) or
    ``||J||_{1,1}`` (``norm=np.inf``), exactly as in :class:`~art_jacreg.trainer.JacobianRegularizedTrainer`.

    * ``bound="global"``: l2: ``low_j = m_j(x) - eps ||a_j||_2 prod_l ||W_l||_2``, ``a_j`` the margin row through the
      last affine block, the layer norms by power iteration with persistent vectors (GloRo); l-inf: interval bound
      propagation with the last layer elided (IBP).
    * ``bound="local"``: the bounds ``certify(method="interval")`` computes, made differentiable (deviation-tightened
      intervals; for l2 the split interval-Jacobian and centre-and-ball bounds through the last ``depth``
      ReLU/MaxPool layers, the global bound kept in the maximum; for l-inf ``crown=True`` adds CROWN-IBP).

    Defaults: ``bound="global"`` (the local bounds certified no more in our measurements and cost 2-4 times more);
    l2: ``ramp=0.25`` (eps grows linearly over the first quarter of the steps), ``kappa=0`` (pure certified loss);
    l-inf: ``ramp=0.5``, ``kappa`` from 1 to 0 along the ramp, training at ``1.3 * eps`` and the ``"step"`` learning
    rate (:data:`SCHEDULE_DEFAULTS`; batch 64 measured better than 128); ``reg_weight=0`` (the certified loss
    alone). The measurements are in the guide page "Choosing norm and reg_weight" (section "Certified training").

    The training bounds are estimates (power iteration approaches the largest singular value from below; they run in
    float32): they are never reported as certificates. Certify the trained classifier with
    :meth:`JacobianBoundReporter.certify`, which recomputes sound bounds in float64 from the weights alone.

    Supported models: an ``nn.Sequential`` chain of ``Conv2d`` (zero padding), ``Linear``, ``ReLU``, ``MaxPool2d``
    and ``Flatten`` (``Dropout`` and ``Identity`` are skipped by the bounds), behind ART's mean/std preprocessing.
    The eps schedule spans each ``fit`` call (a resumed run continues it). The power-iteration vectors persist
    across batches and ``fit`` calls but are not saved in checkpoints: a resumed l2 run restarts them from ``seed``
    (its weights then differ slightly from an uninterrupted run's). ``fit``, ``fit_generator``, ``predict`` and the
    parameter methods are those of :class:`~art_jacreg.trainer.JacobianRegularizedTrainer`; a new ``norm`` given to
    :meth:`set_params` resets the schedule parameters that were not given explicitly, a new ``seed`` also restarts
    the power-iteration vectors.

    :ivar history: One dict per epoch of the last fit, with keys ``epoch``, ``loss``, ``cross_entropy`` (clean),
        ``certified_loss`` (cross-entropy on the worst-case logits), ``regularizer`` (``None`` when
        ``reg_weight == 0``), ``eps`` (mean training radius), ``bound_certified`` (fraction of training samples the
        *training* bound certified at that radius, a training estimate), ``train_accuracy``, ``val_accuracy``,
        ``learning_rate`` and ``seconds``.
    """

    trainer_params: list[str] = [
        "norm", "eps", "bound", "loss", "warmup", "ramp", "kappa", "kappa_start", "train_eps_factor", "depth",
        "crown", "n_power_iterations", "reg_weight", "n_projections", "n_rows", "lr_schedule", "seed", "verbose",
        "nb_epochs", "batch_size",
    ]  # fmt: skip
    _loop_description = "Certified training"
    _logger = logger

    def __init__(
        self,
        classifier: PyTorchClassifier,
        norm: int | float | str = 2,
        eps: float = 0.3,
        bound: str = "global",
        loss: str = "ce",
        warmup: float = 0.0,
        ramp: float | None = None,
        kappa: float | None = None,
        kappa_start: float | None = None,
        train_eps_factor: float | None = None,
        depth: int | None = 1,
        crown: bool = False,
        n_power_iterations: int = 1,
        reg_weight: float = 0.0,
        n_projections: int | None = 1,
        n_rows: int | None = None,
        lr_schedule: str | None = None,
        seed: int | None = None,
        verbose: bool = True,
        nb_epochs: int | None = None,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Create a :class:`CertifiedJacobianTrainer`.

        :param classifier: The ART ``PyTorchClassifier`` to train: an optimizer, a ``torch.nn.CrossEntropyLoss``,
            torch-only mean/std preprocessing and a supported chain model (see the class docstring).
        :param norm: Threat norm: ``2`` / ``"l2"`` or ``np.inf`` / ``"inf"``.
        :param eps: Radius ``> 0`` to certify, in raw input units (before ``preprocessing``).
        :param bound: ``"global"`` (GloRo / IBP) or ``"local"`` (the reporter's interval bounds, differentiable).
        :param loss: ``"ce"`` (cross-entropy on all worst-case logits) or ``"bottom"`` (GloRo's extra bottom
            logit ``max_{j != y} z_j``; refused with class-weighted losses).
        :param warmup: Fraction in ``[0, 1)`` of each run's steps trained at radius 0 before the ramp.
        :param ramp: Fraction in ``[0, 1]`` of the steps over which the radius grows linearly; ``None``: 0.25 (l2),
            0.5 (l-inf).
        :param kappa: Final clean-loss weight in ``[0, 1]``; ``None``: 0.
        :param kappa_start: Clean-loss weight at the start of the ramp; ``None``: ``kappa`` (l2), 1 (l-inf).
        :param train_eps_factor: Training radius = ``eps * train_eps_factor`` (``>= 1``); ``None``: 1 (l2),
            1.3 (l-inf).
        :param depth: l2 ``bound="local"``: ReLU/MaxPool layers (from the output) the local Jacobian rows pass
            through (``>= 1``), or ``None`` for all (much slower).
        :param crown: l-inf ``bound="local"``: add CROWN-IBP margins (no MaxPool2d).
        :param n_power_iterations: Power-iteration steps per batch (``>= 1``, l2).
        :param reg_weight: Weight ``>= 0`` of the Jacobian regulariser (0: not computed).
        :param n_projections: Regulariser estimator for ``norm=2`` (as in ``JacobianRegularizedTrainer``).
        :param n_rows: Regulariser estimator for ``norm=np.inf`` (as in ``JacobianRegularizedTrainer``).
        :param lr_schedule: Learning rate over a ``fit`` call without a ``scheduler``: ``"cosine"`` (decays per epoch
            from the optimizer's rate towards 0), ``"step"`` (the rate times 0.1 after three quarters of the epochs)
            or ``"constant"``; the optimizer's rate is given back afterwards; ``None``:
            ``"cosine"`` (l2), ``"step"`` (l-inf). A ``scheduler`` given to ``fit`` replaces it. Measured on runs of
            40 epochs; a very short run (about 100 steps) learns faster with ``"constant"``.
        :param seed: Seed (int ``>= 0``) of the shuffling, the estimator and the power-iteration start vectors;
            ``None`` draws it from the global generators.
        :param verbose: Show a progress bar (each ``fit`` call can override it).
        :param nb_epochs: Default number of epochs of ``fit`` / ``fit_generator``; ``None``: 20.
        :param batch_size: Default batch size of ``fit``; ``None``: 128.
        :param kwargs: Other keywords are ignored with a logged warning.
        :raises ValueError: On an invalid argument (named) or an unsupported model (``classifier.model``).
        """
        self._check_estimator(classifier)
        super().__init__(classifier)
        self.norm: float = norm  # type: ignore[assignment]
        self.eps, self.bound, self.loss, self.warmup, self.ramp = eps, bound, loss, warmup, ramp
        self.kappa, self.kappa_start, self.train_eps_factor = kappa, kappa_start, train_eps_factor
        self.depth, self.crown, self.n_power_iterations = depth, crown, n_power_iterations
        self.reg_weight, self.n_projections, self.n_rows = reg_weight, n_projections, n_rows
        self.lr_schedule = lr_schedule
        self.seed, self.verbose, self.nb_epochs, self.batch_size = seed, verbose, nb_epochs, batch_size
        schedule = {"ramp": ramp, "kappa": kappa, "kappa_start": kappa_start, "train_eps_factor": train_eps_factor,
                    "lr_schedule": lr_schedule}  # fmt: skip
        self._given = {name for name, value in schedule.items() if value is not None}
        warn_unused(kwargs, "CertifiedJacobianTrainer")
        self._check_params()
        self.history: list[dict[str, Any]] = []
        self._init_generators()
        self._margins = self._build_margins()

    # ------------------------------------------------------------------ parameters

    _defaults_state = ("_given",)

    def _prepare_params(self, kwargs: dict[str, Any]) -> None:
        """A new ``norm`` resets the schedule parameters that were not given explicitly to that norm's defaults."""
        self._given |= {name for name in SCHEDULE_DEFAULTS[2.0] if kwargs.get(name) is not None}
        if "norm" in kwargs:
            for name in SCHEDULE_DEFAULTS[2.0]:
                if name not in self._given:
                    setattr(self, name, None)

    def _reseed(self) -> None:
        """A new ``seed`` restarts the random streams and the power-iteration vectors."""
        self._init_generators()
        self._margins = self._build_margins()

    def _check_params(self) -> None:
        """Validate and normalise the parameters (construction, :meth:`set_params` and every fit)."""
        self.norm = _art.validate_norm(self.norm, name="norm")
        self.eps = validate_real(self.eps, "eps", low=0.0, open_low=True)
        if self.bound not in BOUNDS:
            raise ValueError(f"`bound` must be one of {BOUNDS}, got {self.bound!r}.")
        if self.loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}, got {self.loss!r}.")
        defaults = SCHEDULE_DEFAULTS[self.norm]
        for name in ("ramp", "kappa", "train_eps_factor", "lr_schedule"):
            if getattr(self, name) is None:
                setattr(self, name, defaults[name])
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"`lr_schedule` must be one of {LR_SCHEDULES} or None, got {self.lr_schedule!r}.")
        if self.kappa_start is None:
            self.kappa_start = self.kappa if self.norm == 2 else defaults["kappa_start"]
        self.warmup = validate_real(self.warmup, "warmup", 0.0, 1.0, open_high=True)
        self.ramp = validate_real(self.ramp, "ramp", 0.0, 1.0)
        self.kappa = validate_real(self.kappa, "kappa", 0.0, 1.0)
        self.kappa_start = validate_real(self.kappa_start, "kappa_start", 0.0, 1.0)
        self.train_eps_factor = validate_real(self.train_eps_factor, "train_eps_factor", 1.0)
        if self.depth is not None:
            self.depth = _art.validate_positive_int(self.depth, "depth")
        if not isinstance(self.crown, (bool, np.bool_)):
            raise TypeError(f"`crown` must be a bool, got {type(self.crown).__name__}.")
        if self.crown and not (self.norm == math.inf and self.bound == "local"):
            raise ValueError("`crown=True` applies only to norm=np.inf with bound='local'.")
        self.n_power_iterations = _art.validate_positive_int(self.n_power_iterations, "n_power_iterations")
        self.reg_weight, self.n_projections, self.n_rows = check_jacobian_settings(
            self.norm, self.reg_weight, self.n_projections, self.n_rows, self._classifier.nb_classes
        )
        if self.loss == "bottom" and getattr(self._classifier.loss, "weight", None) is not None:
            raise ValueError("`loss='bottom'` cannot use the class weights of `classifier.loss`; use loss='ce'.")
        self._check_run_params()

    def _build_margins(self) -> CertifiedMargins:
        """The differentiable bounds of the classifier's model (checks that the model is supported)."""
        affine = _art.preprocessing_affine(self._classifier)
        clip = self._classifier.clip_values
        try:
            return CertifiedMargins(
                self._classifier.model,
                tuple(self._classifier.input_shape),
                affine,
                None if clip is None else (float(np.min(clip[0])), float(np.max(clip[1]))),
                seed=0 if self.seed is None else int(self.seed),
            )
        except (UnsupportedOperationError, StopIteration) as err:
            raise ValueError(
                f"`classifier.model` is not supported by certified training ({err or 'no parameters'}); it must be an "
                "nn.Sequential chain of Conv2d, Linear, ReLU, MaxPool2d and Flatten layers."
            ) from err

    def _objective(self) -> CertifiedObjective:
        ce = cross_entropy_like(self._classifier.loss)
        jacobian = None
        if self.reg_weight > 0:
            jacobian = JacobianRegularizedObjective(
                self.norm, self.reg_weight, self.n_projections, self.n_rows, self._torch_gen
            )
        if self._margins.model is not self._classifier.model:  # the classifier's model was replaced
            self._margins = self._build_margins()
        return CertifiedObjective(
            self._margins, self.norm, self.bound, self._schedule(), self.loss, self.depth, self.crown,
            self.n_power_iterations, jacobian, ce, self._classifier.nb_classes,
        )  # fmt: skip

    def _schedule(self) -> EpsSchedule:
        """The radius and clean-loss schedule of the parameters resolved by :meth:`_check_params`."""
        ramp, kappa, kappa_start, factor = self.ramp, self.kappa, self.kappa_start, self.train_eps_factor
        if ramp is None or kappa is None or kappa_start is None or factor is None:
            raise RuntimeError("the schedule parameters are unresolved; `_check_params` must run first")
        return EpsSchedule(self.eps * factor, self.warmup, ramp, kappa_start, kappa)

    def _start_objective(self, objective: Any, nb_epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        objective.start(nb_epochs, steps_per_epoch, start_epoch)

    def _log_start(self, nb_epochs: int, level: int) -> None:
        logger.log(
            level,
            "Certified training: norm=%s, eps=%g, bound=%s, loss=%s, ramp=%g, kappa=%g->%g, reg_weight=%g, %d epochs",
            "2" if self.norm == 2 else "inf",
            self.eps,
            self.bound,
            self.loss,
            self.ramp,
            self.kappa_start,
            self.kappa,
            self.reg_weight,
            nb_epochs,
        )
