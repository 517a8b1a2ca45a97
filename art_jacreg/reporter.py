"""``JacobianBoundReporter``: an ART ``PyTorchClassifier`` that also reports sound robustness certificates.

The reporter is a drop-in :class:`~art.estimators.classification.PyTorchClassifier` (every ART attack and metric
accepts it) with three extra methods:

* :meth:`JacobianBoundReporter.certify` -- ``(prediction, radius)``, the largest radius on which the prediction
  provably cannot change, like ART's ``PyTorchRandomizedSmoothing.certify`` but deterministic and sound;
* :meth:`JacobianBoundReporter.predict_bounds` -- lower/upper logit bounds on a ball, shaped like ART's
  ``PyTorchIBPClassifier.predict_intervals``;
* :meth:`JacobianBoundReporter.report` -- a :class:`~art_jacreg.bound_report.BoundReport` putting the paper's
  first-order estimates (Wu & Li 2024), sound certificates and a real attack side by side.

**Units.** Every ``eps`` and radius is in the *raw* input units the attacker perturbs (the ``clip_values`` space, e.g.
pixels in ``[0, 1]``), through the classifier's ``preprocessing``: the same units as ART's attacks and randomized
smoothing, *not* the normalised units of ART's ``PyTorchIBPClassifier`` and ``PytorchDeepZ``. The threat set is the
ball intersected with the ``clip_values`` box (when set).

**Supported models.** Anything ``torch.fx`` can trace built from Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d,
Flatten/view/reshape, BatchNorm (eval) and Dropout (eval), as modules or functionals, plus ART's ``(mean, std)``
preprocessing. Other models still predict, train and can be attacked; :meth:`~JacobianBoundReporter.certify`,
:meth:`~JacobianBoundReporter.predict_bounds` and :meth:`~JacobianBoundReporter.report` raise
:class:`~art_jacreg.certify.UnsupportedOperationError` (a ``TypeError``) naming the operation, at their first call.
The certified network is cached on the *values* of the weights (:func:`art_jacreg._art.network_of`) and rebuilt on any
change, so certificates always match the current weights. The user's model is left exactly as found: no hooks, no
weight changes, and its train/eval modes, ``requires_grad`` flags and ``.grad`` tensors are restored after every
call of the three methods. Inputs outside ``clip_values`` are refused, since a certificate for them is meaningless.

| Paper link: https://arxiv.org/abs/2412.12449
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from art.estimators.classification import PyTorchClassifier

from art_jacreg import _art, _validate, reporter_batches
from art_jacreg._validate import METHODS
from art_jacreg.bound_report import BoundReport

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = ["JacobianBoundReporter", "BoundReport", "METHODS"]


class JacobianBoundReporter(PyTorchClassifier):
    """A ``PyTorchClassifier`` with sound certificates and side-by-side robust-loss reports.

    Construct it like any ``PyTorchClassifier`` or with :meth:`from_classifier`. All radii and ``eps`` are in raw
    input units (before ``preprocessing``), the threat set is the l2 or l-inf ball intersected with the ``clip_values``
    box.
    """

    estimator_params = PyTorchClassifier.estimator_params + ["verbose"]

    def __init__(
        self,
        model: torch.nn.Module,
        loss: torch.nn.modules.loss._Loss,
        input_shape: tuple[int, ...],
        nb_classes: int,
        optimizer: torch.optim.Optimizer | None = None,
        use_amp: bool = False,
        opt_level: str = "O1",
        loss_scale: str | float | None = "dynamic",
        channels_first: bool = True,
        clip_values: Any = None,
        preprocessing_defences: Any = None,
        postprocessing_defences: Any = None,
        preprocessing: Any = (0.0, 1.0),
        device_type: str = "gpu",
        verbose: bool = True,
    ) -> None:
        """Create a reporter; every argument but ``verbose`` is passed to ``PyTorchClassifier`` unchanged.

        :param model: The torch model (raw logits out). Never modified by the reporter.
        :param loss: The training loss (e.g. ``nn.CrossEntropyLoss()``); reports always use cross-entropy.
        :param input_shape: Shape of one input.
        :param nb_classes: Number of classes.
        :param optimizer: Optimizer for ``fit``.
        :param use_amp: See ``PyTorchClassifier``.
        :param opt_level: See ``PyTorchClassifier``.
        :param loss_scale: See ``PyTorchClassifier``.
        :param channels_first: See ``PyTorchClassifier``.
        :param clip_values: ``(min, max)`` box of valid raw inputs; the threat set is the ball intersected with it.
        :param preprocessing_defences: Not supported by the certificates (they raise ``ValueError``).
        :param postprocessing_defences: Not supported by the certificates (they raise ``ValueError``).
        :param preprocessing: ``(mean, std)`` normalisation, part of the certified network.
        :param device_type: ``"cpu"`` or ``"gpu"``.
        :param verbose: Show tqdm progress bars in the long-running methods.
        """
        super().__init__(
            model,
            loss,
            input_shape,
            nb_classes,
            optimizer=optimizer,
            use_amp=use_amp,
            opt_level=opt_level,
            loss_scale=loss_scale,
            channels_first=channels_first,
            clip_values=clip_values,
            preprocessing_defences=preprocessing_defences,
            postprocessing_defences=postprocessing_defences,
            preprocessing=preprocessing,
            device_type=device_type,
        )
        self.verbose = bool(verbose)

    @classmethod
    def from_classifier(cls, classifier: PyTorchClassifier, verbose: bool = True) -> JacobianBoundReporter:
        """Wrap an existing ``PyTorchClassifier``; the model, loss, optimizer and settings are shared, not copied.

        :param classifier: An ART ``PyTorchClassifier``.
        :param verbose: Show progress bars.
        :return: A reporter predicting exactly like ``classifier``.
        :raises TypeError: If ``classifier`` is not a ``PyTorchClassifier``.
        """
        if not isinstance(classifier, PyTorchClassifier):
            raise TypeError(
                "`classifier` must be an art.estimators.classification.PyTorchClassifier, "
                f"got {type(classifier).__name__}."
            )
        return cls(**_art.classifier_arguments(classifier), verbose=verbose)

    # ------------------------------------------------------------------ helpers (see art_jacreg.reporter_batches)

    def _network(self) -> Any:
        """The certifiable network of the current model (:func:`art_jacreg.reporter_batches.certifiable_network`)."""
        return reporter_batches.certifiable_network(self)

    def _clip(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``clip_values`` box as float32 arrays, or ``None`` (:func:`art_jacreg.reporter_batches.clip_box`)."""
        return reporter_batches.clip_box(self)

    def _show(self, verbose: bool | None) -> bool:
        """Whether to show progress bars: ``verbose``, or the constructor's ``verbose`` when it is ``None``."""
        return self.verbose if verbose is None else bool(verbose)

    # ------------------------------------------------------------------ public API

    @reporter_batches.preserving_model
    def certify(
        self,
        x: np.ndarray,
        norm: Any = 2,
        method: str = "interval",
        batch_size: int = 128,
        verbose: bool | None = None,
        n_jobs: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Certify the predictions on ``x``: the largest radius on which each prediction provably cannot change.

        Sound for every method: no point of the ball (intersected with the ``clip_values`` box) of the returned radius
        changes the prediction. The radius is found by bisection on the certificate, so it is a certified value
        slightly below the method's exact limit.

        :param x: Inputs ``(N, *input_shape)`` in raw units (not modified).
        :param norm: ``2`` or ``np.inf``.
        :param method: ``"lipschitz"`` (global layer-norm product), ``"interval"`` (local interval Jacobian over
            interval bounds) or ``"linear"`` (local interval Jacobian over linear-relaxation bounds).
        :param batch_size: Samples per batch.
        :param verbose: Progress bar (default: the constructor's ``verbose``).
        :param n_jobs: Processes certifying the batches in parallel (:func:`art_jacreg.certify.parallel.map_batches`:
            the same batches of ``batch_size`` points, so the radii are identical bit for bit to ``n_jobs=1`` run with
            one torch thread; use ``batch_size <= N / n_jobs`` to keep every process busy). Under an initialised
            ``torch.distributed`` process group the batches are also sharded over the ranks and every rank returns
            all the results.
        :return: ``(prediction, radius)``: int64 predicted classes ``(N,)`` and float radii ``(N,)`` in raw input units
            (``0`` where nothing is certified).
        :raises ValueError: On invalid arguments, inputs outside ``clip_values`` (a certificate for them would be
            meaningless), or a model whose number of logits differs from ``nb_classes``.
        :raises TypeError: If the model is not float32 (e.g. after ``model.double()``).
        :raises UnsupportedOperationError: If the model contains an operation the certifiers do not support.
        """
        from art_jacreg.certify.parallel import validate_n_jobs

        x = reporter_batches.certifiable_inputs(self, x)
        norm = _validate.validate_norm(norm)
        method = _validate.validate_method(method)
        batch_size = _validate.validate_positive_int(batch_size, "batch_size")
        n_jobs = validate_n_jobs(n_jobs)
        show = self._show(verbose)
        prediction, radius = reporter_batches.certify_batches(self, x, norm, method, batch_size, show, n_jobs)
        logger.info("certify(%s, norm=%s): median radius %.4g over %d samples", method, norm, np.median(radius), len(x))
        return prediction, radius

    @reporter_batches.preserving_model
    def predict_bounds(
        self,
        x: np.ndarray,
        eps: float,
        norm: Any = 2,
        method: str = "interval",
        batch_size: int = 128,
        verbose: bool | None = None,
    ) -> np.ndarray:
        """Sound lower and upper bounds on every logit over the ball of radius ``eps`` (intersected with the box).

        Same layout as ART's ``PyTorchIBPClassifier.predict_intervals``, but ``eps`` is in raw input units.

        :param x: Inputs ``(N, *input_shape)`` in raw units (not modified).
        :param eps: Radius ``>= 0``, raw input units.
        :param norm: ``2`` or ``np.inf``.
        :param method: ``"lipschitz"``, ``"interval"`` or ``"linear"``.
        :param batch_size: Samples per batch.
        :param verbose: Progress bar (default: the constructor's ``verbose``).
        :return: float32 array ``(N, 2, nb_classes)``: ``[:, 0]`` lower and ``[:, 1]`` upper bounds.
        :raises ValueError: On invalid arguments, inputs outside ``clip_values`` (a certificate for them would be
            meaningless), or a model whose number of logits differs from ``nb_classes``.
        :raises TypeError: If the model is not float32 (e.g. after ``model.double()``).
        :raises UnsupportedOperationError: If the model contains an operation the certifiers do not support.
        """
        x = reporter_batches.certifiable_inputs(self, x)
        eps = _validate.validate_eps(eps)
        norm = _validate.validate_norm(norm)
        method = _validate.validate_method(method)
        batch_size = _validate.validate_positive_int(batch_size, "batch_size")
        return reporter_batches.logit_bounds_batches(self, x, eps, norm, method, batch_size, self._show(verbose))

    @reporter_batches.preserving_model
    def report(
        self,
        x: np.ndarray,
        y: np.ndarray,
        eps: float,
        norm: Any = 2,
        attack: str = "apgd",
        method: str = "interval",
        batch_size: int = 128,
        attack_params: dict[str, Any] | None = None,
        seed: int = 0,
        verbose: bool | None = None,
        n_jobs: int = 1,
    ) -> BoundReport:
        """Per-sample losses on the ball of radius ``eps``, each labelled for what it is (see :class:`BoundReport`).

        * ``loss`` (exact): clean cross-entropy.
        * ``first_order_loss``, ``jacobian_surrogate_loss`` (*first-order estimate*, the paper's): may be exceeded by
          an attack, because the linearisation ignores curvature.
        * ``certified_loss_bound``, ``certified``, ``certified_radius`` (*sound certificate*): can never be exceeded.
        * ``attack_loss``, ``attack_success`` (*empirical*): the highest cross-entropy the attack found in the ball
          (at least the clean loss), and whether it found a misclassified point.

        :param x: Inputs ``(N, *input_shape)`` in raw units (not modified).
        :param y: Labels, indices ``(N,)`` or exact one-hot ``(N, nb_classes)`` (not modified); soft labels, all-zero
            and negated rows are refused.
        :param eps: Radius ``>= 0``, raw input units.
        :param norm: ``2`` or ``np.inf``.
        :param attack: ``"apgd"`` (ART APGD, cross-entropy), ``"autoattack"`` (ART AutoAttack with APGD-CE and
            APGD-DLR), ``"torchattacks"`` (torchattacks APGD, cross-entropy) or ``"pgd"`` (ART PGD).
        :param method: Certification method: ``"lipschitz"``, ``"interval"`` or ``"linear"``.
        :param batch_size: Samples per batch.
        :param attack_params: Overrides of the attack's keyword arguments, e.g. ``{"max_iter": 20}`` (torchattacks:
            ``{"steps": 20}``).
        :param seed: Seed of the attack's random starts (global random states are restored).
        :param verbose: Progress bars (default: the constructor's ``verbose``).
        :param n_jobs: Processes computing the certificates (loss bound, certified, radius) of the batches in parallel,
            as in :meth:`certify` (identical results to ``n_jobs=1``; sharded over the ranks under torch.distributed).
            The first-order estimates and the attack run in the calling process.
        :return: The :class:`BoundReport`.
        :raises ValueError: On invalid arguments, inputs outside ``clip_values`` (a certificate for them would be
            meaningless), or a model whose number of logits differs from ``nb_classes``.
        :raises TypeError: If the model is not float32 (e.g. after ``model.double()``).
        :raises UnsupportedOperationError: If the model contains an operation the certifiers do not support.
        """
        from art_jacreg.certify.parallel import validate_n_jobs

        x = reporter_batches.certifiable_inputs(self, x)
        y = _validate.validate_labels(y, x.shape[0], self.nb_classes)
        eps = _validate.validate_eps(eps)
        norm = _validate.validate_norm(norm)
        attack = _validate.validate_attack(attack)
        method = _validate.validate_method(method)
        batch_size = _validate.validate_positive_int(batch_size, "batch_size")
        n_jobs = validate_n_jobs(n_jobs)
        report = reporter_batches.assemble_bound_report(
            self, x, y, eps, norm, attack, method, batch_size, attack_params, seed, self._show(verbose), n_jobs
        )
        logger.info("%r", report)
        return report
