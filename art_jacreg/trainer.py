r"""Jacobian-regularized training of an ART :class:`PyTorchClassifier`.

The trainer minimises, per mini-batch,

    mean cross-entropy  +  reg_weight * mean regulariser,

where the regulariser is the paper's Jacobian term for the threat model: :math:`\|J(x)\|_F^2` for l2 threats
(``norm=2``) and :math:`\|J(x)\|_{1,1}` for l-inf threats (``norm=np.inf``), ``J`` being the Jacobian of the logits
w.r.t. the *raw* input (ART's ``preprocessing`` is inside the differentiated function, so the regulariser is in the
units the attacker perturbs). Both are computed by double backpropagation, exactly or by unbiased random estimates
(see :mod:`art_jacreg.norms`). This module is the ART ``Trainer`` face (validation, defaults, documentation); the
training loop is :mod:`art_jacreg.training.loop` and the objective :mod:`art_jacreg.training.objectives`.

| Paper link: https://arxiv.org/abs/2412.12449 (Wu and Li 2024, Jacobian regularization and robust generalization)
| Paper link: https://arxiv.org/abs/1908.02729 (Hoffman, Roberts and Yaida 2019, random-projection estimator)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from art.estimators.classification.pytorch import PyTorchClassifier

from art_jacreg import _art
from art_jacreg.training import batches, checks
from art_jacreg.training.art_face import DEFAULT_BATCH_SIZE, DEFAULT_NB_EPOCHS, ArtTrainerFace  # noqa: F401 (re-exported)
from art_jacreg.training.art_face import warn_unused as _warn_unused
from art_jacreg.training.jr_variants import VariantObjective, check_variant_settings
from art_jacreg.training.objectives import (
    JacobianRegularizedObjective,
    check_jacobian_estimator,
    check_jacobian_settings,
    cross_entropy_like,
)

logger = logging.getLogger(__name__)

__all__ = ["JacobianRegularizedTrainer"]

#: Default ``reg_weight`` per norm, measured on the embedded MNIST (4,000 training digits) with ``mnist_cnn``,
#: Adam(1e-3), 10 epochs: the numbers are in the guide page "Choosing norm and reg_weight".
DEFAULT_REG_WEIGHTS: dict[float, float] = {2.0: 0.01, float(np.inf): 0.001}


def default_reg_weight(norm: float, target: str = "logits") -> float:
    """The default ``reg_weight`` of a threat ``norm`` and a regularised ``target``.

    Only ``target="logits"`` has defaults (:data:`DEFAULT_REG_WEIGHTS`): the input gradient of the loss or of the
    margin lives on another scale (the weights measured for them are in the guide page "Choosing norm and
    reg_weight"), so those targets need an explicit ``reg_weight``.

    :param norm: ``2.0`` or ``np.inf``.
    :param target: ``"logits"``, ``"loss"`` or ``"margin"``.
    :return: :data:`DEFAULT_REG_WEIGHTS` ``[norm]``.
    :raises ValueError: For another ``target``.
    """
    if target != "logits":
        raise ValueError(
            f"`reg_weight` has no default for target={target!r}: pass it explicitly (measured on MNIST with "
            "mnist_cnn: 1 to 10 for target='loss', norm=2; see the guide page 'Choosing norm and reg_weight')."
        )
    return DEFAULT_REG_WEIGHTS[norm]


class JacobianRegularizedTrainer(ArtTrainerFace):
    """Train a PyTorch classifier with the Jacobian regularisers of Wu and Li (2024).

    Loss per batch: ``mean_b CE(f(x_b), y_b) + reg_weight * mean_b R(x_b)`` with

    * ``norm=2``: ``R = ||J||_F^2`` (the paper's l2 regulariser). ``n_projections=m`` uses the unbiased estimate
      ``K * mean_m ||v^T J||_2^2`` with ``v`` uniform on the unit sphere (``m`` vector-Jacobian products per batch,
      Hoffman et al. 2019); ``n_projections=None`` computes it exactly (``K`` products).
    * ``norm=np.inf``: ``R = ||J||_{1,1}`` (the paper's l-inf regulariser). ``n_rows=None`` is exact (``K`` products);
      ``n_rows=m`` samples ``m`` rows without replacement per sample (unbiased).

    ``J`` is the Jacobian of the logits w.r.t. the raw input, through the classifier's ``preprocessing``. The
    cross-entropy is the classifier's ``loss``, which must be a ``torch.nn.CrossEntropyLoss``: its class ``weight``,
    ``ignore_index`` and ``label_smoothing`` are used, its ``reduction`` is not: the cross-entropy is always the
    batch mean as torch defines it (with class weights the weighted mean ``sum_i w[y_i] l_i / sum_i w[y_i]``), so
    ``reduction="sum"`` does not rescale the trade-off set by ``reg_weight``. Any other loss is refused
    (``ValueError`` naming ``classifier.loss``). The classifier's optimizer performs the updates.

    Defaults: ``reg_weight=None`` resolves to ``0.01`` for ``norm=2`` and ``0.001`` for ``norm=np.inf``
    (:data:`DEFAULT_REG_WEIGHTS`; fixed at construction): on the embedded MNIST with ``mnist_cnn`` they keep clean
    accuracy above 0.95 while multiplying PGD accuracy by 2.5-3. The measurements behind them, and those of the
    variants below against ART's trainers, are in the guide page "Choosing norm and reg_weight".

    Variants (options ``target``, ``finite_difference``, ``perturbation``, ``perturbed_terms``, ``eps``,
    ``reg_warmup_epochs``; :mod:`art_jacreg.training.jr_variants`): the regulariser on the input gradient of the
    per-sample loss (``target="loss"``, Ross and Doshi-Velez 2018) or margin (``"margin"``); its finite-difference
    version at radius ``eps`` (``finite_difference=True``, Finlay and Oberman 2019); the terms at a random or
    one-step (FGSM with random start) perturbed point (``perturbation``); a linear warm-up of ``reg_weight``. All
    defaults reproduce the objective above.

    Models with BatchNorm in training mode couple the samples of a batch; the regulariser then includes the (small)
    cross-sample terms through the batch statistics. Such a layer cannot normalise a batch of one sample, so a last
    batch of size 1 is skipped (one logged warning per ``fit``; with the per-epoch reshuffling of :meth:`fit` a
    different sample is left out each epoch) and ``batch_size=1`` is refused. Dropout masks are shared between the
    cross-entropy and the regulariser of a step (one forward pass serves both).

    Checked at every ``fit``: inputs outside the classifier's ``clip_values`` (warning), a model that ends in a
    Softmax (warning, from the first batch's outputs), a logit count other than ``nb_classes``, a model that is not
    float32 (``model.double()``: call ``model.float()``) and a ``preprocessing`` standard deviation of 0 (errors).
    A non-finite loss, gradient or updated weight stops training with a ``FloatingPointError`` naming the epoch and
    batch, after restoring the weights and optimizer state of the last good step.

    Like ART's attacks, the parameters listed in :attr:`trainer_params` are read with :meth:`get_params` and changed
    (validated) with :meth:`set_params`; a default ``reg_weight`` (constructed with ``None``) follows a new ``norm``.
    :meth:`fit`, :meth:`fit_generator`, :meth:`predict` and the parameter methods are shared with
    :class:`~art_jacreg.certified_trainer.CertifiedJacobianTrainer`
    (:class:`~art_jacreg.training.art_face.ArtTrainerFace`).

    :ivar history: One dict per epoch of the last :meth:`fit` / :meth:`fit_generator` call, with keys ``epoch``
        (1-based), ``loss``, ``cross_entropy``, ``regularizer`` (mean unweighted regulariser estimate, ``None`` when
        ``reg_weight == 0`` since it is then not computed), ``train_accuracy`` (running accuracy on the training
        batches, before each update), ``val_accuracy`` (``None`` without validation data), ``learning_rate`` (of
        the first parameter group during the epoch) and ``seconds``.
    """

    estimator_requirements: tuple[type, ...] = (PyTorchClassifier,)
    trainer_params: list[str] = [
        "norm", "reg_weight", "n_projections", "n_rows", "seed", "verbose", "nb_epochs", "batch_size",
        "target", "perturbation", "perturbed_terms", "finite_difference", "eps", "reg_warmup_epochs",
        "jacobian_estimator",
    ]  # fmt: skip

    def __init__(
        self,
        classifier: PyTorchClassifier,
        norm: int | float | str = 2,
        reg_weight: float | None = None,
        n_projections: int | None = 1,
        n_rows: int | None = None,
        seed: int | None = None,
        verbose: bool = True,
        nb_epochs: int | None = None,
        batch_size: int | None = None,
        target: str = "logits",
        perturbation: str | None = None,
        perturbed_terms: str = "both",
        finite_difference: bool = False,
        eps: float | None = None,
        reg_warmup_epochs: int = 0,
        jacobian_estimator: str = "vjp",
        **kwargs: Any,
    ) -> None:
        """Create a :class:`JacobianRegularizedTrainer`.

        :param classifier: The ART ``PyTorchClassifier`` to train; it must have an optimizer, a
            ``torch.nn.CrossEntropyLoss`` and torch-only preprocessing.
        :param norm: Threat-model norm selecting the regulariser: ``2`` / ``"l2"`` (``||J||_F^2``) or ``np.inf`` /
            ``"inf"`` (``||J||_{1,1}``).
        :param reg_weight: Weight ``>= 0`` of the regulariser; ``None`` uses :data:`DEFAULT_REG_WEIGHTS` for ``norm``.
            ``0`` is plain cross-entropy training (the regulariser is then not computed).
        :param n_projections: For ``norm=2``: number of random projections (``>= 1``), or ``None`` for the exact norm.
        :param n_rows: For ``norm=np.inf``: number of Jacobian rows sampled per sample (``1..nb_classes``), or
            ``None`` for the exact norm.
        :param seed: Seed (int ``>= 0``) of the projections / row draws and of the shuffling in :meth:`fit`;
            ``None`` draws the seed from numpy's and torch's global generators (``np.random.seed``,
            ``torch.manual_seed``, ``art.utils.master_seed``), so a seeded ART script is reproducible. Read at
            construction (and by :meth:`set_params`); the random streams continue across successive ``fit`` calls.
        :param verbose: Show a tqdm progress bar over the epochs (each ``fit`` call can override it).
        :param nb_epochs: Default number of epochs of :meth:`fit` / :meth:`fit_generator` (as in ART's
            ``AdversarialTrainerMadryPGD``); a call argument overrides it; ``None``: 20.
        :param batch_size: Default batch size of :meth:`fit`; a call argument overrides it; ``None``: 128.
        :param target: What is regularised: ``"logits"`` (the Jacobian of the logits, above), ``"loss"`` (the input
            gradient of the per-sample cross-entropy, Ross and Doshi-Velez 2018) or ``"margin"`` (the input gradient
            of ``f_y - max_{j != y} f_j``); for those two the regulariser is ``||g||_2^2`` (``norm=2``) or
            ``||g||_1`` (``norm=np.inf``) and ``n_projections`` / ``n_rows`` do not apply.
        :param perturbation: ``None``, ``"random"`` or ``"fgsm"``: compute the terms at a cheaply perturbed point in
            the ``eps`` ball of ``norm`` (a random start, plus for ``"fgsm"`` one gradient step of ``1.25 eps`` as in
            fast adversarial training), clipped to the classifier's ``clip_values``.
        :param perturbed_terms: With ``perturbation``: ``"both"`` (cross-entropy and regulariser at the perturbed
            point) or ``"regularizer"`` (only the regulariser; the cross-entropy stays on the clean point).
        :param finite_difference: ``target="loss"``/``"margin"`` only: replace the input-gradient norm by the change
            of the scalar over a step of size ``eps`` along its steepest-ascent direction (Finlay and Oberman 2019).
        :param eps: Radius / step in raw input units, required by (and only allowed with) ``perturbation`` or
            ``finite_difference``; typically the attack radius.
        :param reg_warmup_epochs: Linear warm-up of ``reg_weight``: epoch ``e`` uses
            ``reg_weight * min(1, e / (reg_warmup_epochs + 1))`` (``0``: none).
        :param jacobian_estimator: For ``norm=2`` with ``n_projections``: how ``||J||_F^2`` is estimated.
            ``"vjp"`` (default) random projections of the logits by vector-Jacobian products (double
            backpropagation); ``"jvp"`` forward-mode products ``J u`` along random input directions, on the
            cross-entropy's forward pass; ``"finite_difference"`` central differences along random input directions
            (biased, ``O(h^2)``). See :mod:`art_jacreg.forward_norms` and ``benchmarks/bench_jacobian.py
            --estimators`` for their cost (neither forward estimator was cheaper at equal robustness on a CPU).
        :param kwargs: Other keywords are ignored with a logged warning.
        """
        self._check_estimator(classifier)
        super().__init__(classifier)
        self._classifier: PyTorchClassifier
        self.norm: float = norm  # type: ignore[assignment]  # normalised by _check_params
        self.reg_weight: float = reg_weight  # type: ignore[assignment]
        self.n_projections = n_projections
        self.n_rows = n_rows
        self.seed = seed
        self.verbose = verbose
        self.nb_epochs = nb_epochs
        self.batch_size = batch_size
        self.target = target
        self.perturbation = perturbation
        self.perturbed_terms = perturbed_terms
        self.finite_difference = finite_difference
        self.eps = eps
        self.reg_warmup_epochs = reg_warmup_epochs
        self.jacobian_estimator = jacobian_estimator
        self._reg_weight_is_default = False
        _warn_unused(kwargs, "JacobianRegularizedTrainer")
        self._check_params()
        self.history: list[dict[str, Any]] = []
        self._init_generators()

    # ------------------------------------------------------------------ parameters

    _defaults_state = ("_reg_weight_is_default",)

    def _prepare_params(self, kwargs: dict[str, Any]) -> None:
        """A default ``reg_weight`` follows a new ``norm`` or ``target``; an explicit one stops being the default."""
        changes_default = "norm" in kwargs or "target" in kwargs
        if changes_default and "reg_weight" not in kwargs and self._reg_weight_is_default:
            self.reg_weight = None  # type: ignore[assignment]
        if "reg_weight" in kwargs:
            self._reg_weight_is_default = False

    def _check_params(self) -> None:
        """Validate and normalise the trainer's parameters (called at construction, set_params and every fit)."""
        self.norm = _art.validate_norm(self.norm, name="norm")
        (
            self.target,
            self.perturbation,
            self.perturbed_terms,
            self.finite_difference,
            self.eps,
            self.reg_warmup_epochs,
        ) = check_variant_settings(
            self.target,
            self.perturbation,
            self.perturbed_terms,
            self.finite_difference,
            self.eps,
            self.reg_warmup_epochs,
            self.n_projections,
            self.n_rows,
        )
        if self.reg_weight is None:
            self.reg_weight = default_reg_weight(self.norm, self.target)
            self._reg_weight_is_default = True
        elif self.target != "logits" or self.reg_weight != DEFAULT_REG_WEIGHTS.get(self.norm):
            self._reg_weight_is_default = False
        self.reg_weight, self.n_projections, self.n_rows = check_jacobian_settings(
            self.norm, self.reg_weight, self.n_projections, self.n_rows, self._classifier.nb_classes
        )
        self.jacobian_estimator = check_jacobian_estimator(
            self.jacobian_estimator, self.norm, self.n_projections, self.target
        )
        self._check_run_params()

    def _objective(self, training: bool = True) -> JacobianRegularizedObjective:
        """The objective with the current settings; for training it uses the classifier's loss and checks the
        first batch's outputs (``training=False``: only the logit-Jacobian regulariser of
        :meth:`compute_regularizer` is needed, any loss is fine, whatever ``target``).
        """
        if not training:
            n_projections = self.n_projections if self.target == "logits" else 1
            return JacobianRegularizedObjective(self.norm, self.reg_weight, n_projections, self.n_rows, self._torch_gen,
                                                jacobian_estimator=self.jacobian_estimator)  # fmt: skip
        return VariantObjective(
            self.norm,
            self.reg_weight,
            self.n_projections,
            self.n_rows,
            self._torch_gen,
            cross_entropy_like(self._classifier.loss),
            self._classifier.nb_classes,
            target=self.target,
            perturbation=self.perturbation,
            perturbed_terms=self.perturbed_terms,
            finite_difference=self.finite_difference,
            eps=self.eps,
            reg_warmup_epochs=self.reg_warmup_epochs,
            clip_values=self._classifier.clip_values,
            jacobian_estimator=self.jacobian_estimator,
        )

    # ------------------------------------------------------------------ public API

    def compute_regularizer(self, x: np.ndarray, batch_size: int = 128, exact: bool = True) -> np.ndarray:
        """The per-sample regulariser (``||J||_F^2`` or ``||J||_{1,1}``) of the current model, in evaluation mode.

        :param x: Inputs ``(N, *input_shape)`` in raw units.
        :param batch_size: Batch size of the computation.
        :param exact: ``True`` for the exact norm; ``False`` for the trainer's estimator (``n_projections`` /
            ``n_rows``, drawing from the trainer's random stream).
        :return: float array ``(N,)``.
        """
        x_arr = _art.validate_x(x, self._classifier, name="x")
        batch_size = _art.validate_positive_int(batch_size, "batch_size")
        checks.check_float32_model(self._classifier.model, "classifier.model")
        func = _art.logits_function(self._classifier)
        objective = self._objective(training=False)
        out = []
        with _art.model_mode(_art.wrapped_model(self._classifier), False):
            for start in range(0, x_arr.shape[0], batch_size):
                x_t = torch.from_numpy(x_arr[start : start + batch_size]).to(self._classifier.device)
                x_t.requires_grad_(True)
                reg = objective.regularizer(x_t, func(x_t), create_graph=False, exact=exact, forward=func)
                out.append(reg.detach().cpu().numpy())
        return np.concatenate(out)

    # ------------------------------------------------------------------ the run (ArtTrainerFace)

    _loop_description = "Jacobian regularization"

    def _log_start(self, nb_epochs: int, level: int) -> None:
        message = "Jacobian-regularized training: norm=%s, reg_weight=%g, n_projections=%s, n_rows=%s, %d epochs"
        norm = "2" if self.norm == 2 else "inf"
        logger.log(level, message, norm, self.reg_weight, self.n_projections, self.n_rows, nb_epochs)

    def _wrap_epochs(self, epoch_batches: batches.EpochBatches, objective: Any) -> batches.EpochBatches:
        """The epochs with the ``reg_weight`` warm-up factor of each epoch set first (``reg_warmup_epochs``)."""

        def run_epoch(epoch: int) -> Any:
            objective.start_epoch(epoch)
            return epoch_batches(epoch)

        return run_epoch
