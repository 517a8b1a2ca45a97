r"""Training objectives for :class:`art_jacreg.training.loop.TrainingLoop` (torch only, no ART).

:class:`JacobianRegularizedObjective` is the objective of :class:`art_jacreg.JacobianRegularizedTrainer`:

    mean cross-entropy  +  reg_weight * mean regulariser,

with the regulariser :math:`\|J(x)\|_F^2` (``norm=2``) or :math:`\|J(x)\|_{1,1}` (``norm=inf``) of the logits
w.r.t. the input of ``forward``, exact or estimated by :mod:`art_jacreg.norms`. The ``jacobian_estimator`` of
:math:`\|J\|_F^2` is ``"vjp"`` (random projections of the logits, double backpropagation), ``"jvp"`` (forward mode
along random input directions, on the forward pass of the cross-entropy) or ``"finite_difference"`` (central
differences along random input directions, two more forward passes); see :mod:`art_jacreg.forward_norms`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from art_jacreg._art import validate_positive_int
from art_jacreg.forward_norms import (
    frobenius_norm_sq_finite_difference,
    frobenius_norm_sq_jvp,
    validate_estimator,
)
from art_jacreg.norms import frobenius_norm_sq_from_logits, l11_norm_from_logits
from art_jacreg.training.checks import check_logits
from art_jacreg.training.loop import Forward, ObjectiveOutput

__all__ = ["cross_entropy_like", "check_jacobian_settings", "check_jacobian_estimator", "JacobianRegularizedObjective"]

CrossEntropy = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_like(loss: torch.nn.Module | None, name: str = "classifier.loss") -> CrossEntropy:
    """The cross-entropy of a ``torch.nn.CrossEntropyLoss``, with its reduction normalised to a mean.

    The class ``weight``, ``ignore_index`` and ``label_smoothing`` of ``loss`` are used; its ``reduction`` is not:
    the result is always the mean as torch defines it (with class weights, the weighted mean
    ``sum_i w[y_i] l_i / sum_i w[y_i]``), so a regulariser weight keeps its meaning whatever the batch size.

    :param loss: A ``torch.nn.CrossEntropyLoss`` (or subclass), or ``None`` for the plain cross-entropy.
    :param name: Name of the loss in the error message.
    :return: ``ce(logits, y)`` for logits ``(B, K)`` and class indices ``(B,)``, a scalar tensor.
    :raises ValueError: If ``loss`` is another kind of loss.
    """
    if loss is None:
        return torch.nn.functional.cross_entropy
    if not isinstance(loss, torch.nn.CrossEntropyLoss):
        raise ValueError(
            f"`{name}` is a {type(loss).__name__}; the Jacobian-regularized objective supports only "
            "torch.nn.CrossEntropyLoss (with optional weight, ignore_index and label_smoothing) on logits."
        )
    weight, ignore_index, smoothing = loss.weight, loss.ignore_index, loss.label_smoothing

    def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = None if weight is None else weight.to(device=logits.device, dtype=logits.dtype)
        return torch.nn.functional.cross_entropy(
            logits, y, weight=w, ignore_index=ignore_index, label_smoothing=smoothing, reduction="mean"
        )

    return cross_entropy


def check_jacobian_settings(
    norm: float, reg_weight: object, n_projections: object, n_rows: object, nb_classes: int
) -> tuple[float, int | None, int | None]:
    """Validate the settings of :class:`JacobianRegularizedObjective` (``norm`` already normalised).

    :param norm: ``2.0`` or ``math.inf``.
    :param reg_weight: A finite real ``>= 0``.
    :param n_projections: ``None`` or an integer ``>= 1``.
    :param n_rows: ``None``, or for ``norm=inf`` an integer in ``1..nb_classes``.
    :param nb_classes: The number of classes.
    :return: ``(reg_weight, n_projections, n_rows)`` normalised (float, int or None, int or None).
    :raises TypeError: If ``reg_weight`` is not a real number.
    :raises ValueError: On a value out of range, or ``n_rows`` with ``norm=2``.
    """
    if isinstance(reg_weight, bool) or not isinstance(reg_weight, numbers.Real):
        raise TypeError(f"`reg_weight` must be a real number >= 0, got {type(reg_weight).__name__}.")
    if not math.isfinite(float(reg_weight)) or float(reg_weight) < 0:
        raise ValueError(f"`reg_weight` must be a finite number >= 0, got {reg_weight!r}.")
    if n_projections is not None:
        n_projections = validate_positive_int(n_projections, "n_projections")
    if n_rows is not None:
        if norm != math.inf:
            raise ValueError(
                f"`n_rows` only applies to norm=np.inf (the ||J||_{{1,1}} regulariser); got n_rows={n_rows!r} "
                "with norm=2. Use `n_projections` for norm=2."
            )
        n_rows = validate_positive_int(n_rows, "n_rows")
        if n_rows > nb_classes:
            raise ValueError(f"`n_rows` must be at most nb_classes ({nb_classes}), got {n_rows}.")
    return float(reg_weight), n_projections, n_rows


def check_jacobian_estimator(estimator: object, norm: float, n_projections: int | None, target: str = "logits") -> str:
    """Validate the ``estimator`` of ``||J||_F^2`` against the other settings.

    :param estimator: One of :data:`art_jacreg.forward_norms.ESTIMATORS`.
    :param norm: ``2.0`` or ``math.inf`` (normalised).
    :param n_projections: ``None`` (exact norm) or the number of random directions.
    :param target: What is regularised (``"logits"`` for the Jacobian of the logits).
    :return: The normalised name.
    :raises ValueError: On an unknown name, or ``"jvp"`` / ``"finite_difference"`` with ``norm=inf``, with the exact
        norm (``n_projections=None``) or with another ``target``.
    """
    estimator = validate_estimator(estimator, "jacobian_estimator")
    if estimator == "vjp":
        return estimator
    if norm != 2:
        raise ValueError(
            f"`jacobian_estimator`={estimator!r} estimates ||J||_F^2 (norm=2); norm=np.inf (||J||_{{1,1}}) supports "
            "only jacobian_estimator='vjp' (with `n_rows`)."
        )
    if n_projections is None:
        raise ValueError(
            f"`jacobian_estimator`={estimator!r} is a random estimate: it needs `n_projections` >= 1 "
            "(n_projections=None is the exact norm, computed with vector-Jacobian products; use "
            "jacobian_estimator='vjp' with it)."
        )
    if target != "logits":
        raise ValueError(f'`jacobian_estimator`={estimator!r} applies only to target="logits", got target={target!r}.')
    return estimator


class JacobianRegularizedObjective:
    """Cross-entropy plus ``reg_weight`` times the batch mean of a Jacobian norm, from one shared forward pass.

    :param norm: ``2.0`` (``||J||_F^2``) or ``math.inf`` (``||J||_{1,1}``).
    :param reg_weight: Weight ``>= 0`` of the regulariser (``0``: not computed).
    :param n_projections: ``norm=2``: random projections of the estimate, ``None`` for the exact norm.
    :param n_rows: ``norm=inf``: rows sampled per sample, ``None`` for the exact norm.
    :param generator: Random generator of the projections / row draws.
    :param cross_entropy: The cross-entropy (see :func:`cross_entropy_like`).
    :param nb_classes: Number of classes; the outputs of the first batch are checked against it
        (:func:`~art_jacreg.training.checks.check_logits`).
    :param jacobian_estimator: ``norm=2`` with ``n_projections``: ``"vjp"``, ``"jvp"`` or ``"finite_difference"``
        (:func:`check_jacobian_estimator`).
    """

    #: Advice appended to the error of a non-finite loss.
    nonfinite_advice = "Lower the learning rate or reg_weight."

    def __init__(
        self,
        norm: float,
        reg_weight: float,
        n_projections: int | None,
        n_rows: int | None,
        generator: torch.Generator,
        cross_entropy: CrossEntropy = torch.nn.functional.cross_entropy,
        nb_classes: int | None = None,
        jacobian_estimator: str = "vjp",
    ) -> None:
        self.norm = norm
        self.jacobian_estimator = check_jacobian_estimator(jacobian_estimator, norm, n_projections)
        self.reg_weight = reg_weight
        self.n_projections = n_projections
        self.n_rows = n_rows
        self.generator = generator
        self.cross_entropy = cross_entropy
        self.nb_classes = nb_classes
        self._outputs_checked = nb_classes is None
        self._shared: tuple[torch.Tensor, torch.Tensor] | None = None  # (logits, jvp estimate) of the last forward

    def __call__(self, forward: Forward, x: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        """The loss of one batch and its parts ``cross_entropy`` and ``regularizer`` (``None`` if not computed).

        :param forward: Map from an input batch to logits.
        :param x: Input batch.
        :param y: Class indices.
        :return: The :class:`~art_jacreg.training.loop.ObjectiveOutput`.
        """
        regularize = self.reg_weight > 0
        # One forward pass serves both terms: the regulariser is taken from the same logits as the cross-entropy.
        x_in = x.detach().clone().requires_grad_(regularize)
        logits = self.forward_logits(forward, x_in, regularize)
        if not self._outputs_checked:
            check_logits(logits, self.nb_classes)  # type: ignore[arg-type]
            self._outputs_checked = True
        reg = self.regularizer(x_in, logits, forward=forward).mean() if regularize else None
        ce = self.cross_entropy(logits, y)
        loss = ce if reg is None else ce + self.reg_weight * reg
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == y).sum()
        parts = {"cross_entropy": ce.detach(), "regularizer": None if reg is None else reg.detach()}
        return ObjectiveOutput(loss, parts, correct)

    def forward_logits(self, forward: Forward, x: torch.Tensor, regularize: bool = True) -> torch.Tensor:
        """The logits of ``x`` for the loss; with ``jacobian_estimator="jvp"`` and ``regularize`` the same (dual)
        forward pass also yields the regulariser, kept for the next :meth:`regularizer` call with these logits.

        With ``"jvp"`` or ``"finite_difference"`` the logits are not connected to ``x`` (the regulariser does not
        differentiate w.r.t. the input), which spares the backward pass the input gradient.

        :param forward: Map from an input batch to logits.
        :param x: Input batch (requires grad for ``jacobian_estimator="vjp"``).
        :param regularize: Whether the regulariser of this batch will be computed.
        :return: Logits ``(B, K)``.
        """
        self._shared = None
        if self.jacobian_estimator == "vjp" or not regularize:
            return forward(x)
        if self.jacobian_estimator == "finite_difference":
            return forward(x.detach())
        logits, estimate = frobenius_norm_sq_jvp(
            forward, x, self.n_projections or 1, create_graph=True, generator=self.generator
        )
        self._shared = (logits, estimate)
        return logits

    def regularizer(
        self,
        x: torch.Tensor,
        logits: torch.Tensor,
        create_graph: bool = True,
        exact: bool = False,
        forward: Forward | None = None,
    ) -> torch.Tensor:
        """Per-sample regulariser ``(B,)`` from a forward pass (``x`` requires grad): exact, or the configured
        estimator; differentiable w.r.t. the weights when ``create_graph``.

        :param x: Input batch that requires grad.
        :param logits: Logits computed from ``x`` (by :meth:`forward_logits`, whose ``"jvp"`` estimate is reused).
        :param create_graph: Keep the graph (training).
        :param exact: Use the exact norm whatever the estimator settings.
        :param forward: Map from an input batch to logits; needed by ``jacobian_estimator="jvp"`` (unless ``logits``
            come from :meth:`forward_logits`) and ``"finite_difference"``.
        :return: Tensor ``(B,)``.
        :raises ValueError: If the estimator needs ``forward`` and it is not given.
        """
        if self.norm == 2:
            n_proj = None if exact else self.n_projections
            if n_proj is None or self.jacobian_estimator == "vjp":
                return frobenius_norm_sq_from_logits(
                    x, logits, n_projections=n_proj, create_graph=create_graph, generator=self.generator
                )
            return self._forward_estimate(x, logits, n_proj, create_graph, forward)
        if self.norm != math.inf:
            raise ValueError(f"`norm` must be 2 or inf, got {self.norm!r}.")
        n_rows = None if exact else self.n_rows
        return l11_norm_from_logits(x, logits, n_rows=n_rows, create_graph=create_graph, generator=self.generator)

    def _forward_estimate(
        self, x: torch.Tensor, logits: torch.Tensor, n_proj: int, create_graph: bool, forward: Forward | None
    ) -> torch.Tensor:
        """The ``"jvp"`` / ``"finite_difference"`` estimate of ``||J||_F^2`` (the shared one when it matches)."""
        shared, self._shared = self._shared, None
        if self.jacobian_estimator == "jvp" and shared is not None and shared[0] is logits:
            return shared[1] if create_graph else shared[1].detach()
        if forward is None:
            raise ValueError(
                f"jacobian_estimator={self.jacobian_estimator!r} needs `forward` (the map from inputs to logits)."
            )
        if self.jacobian_estimator == "jvp":
            return frobenius_norm_sq_jvp(forward, x, n_proj, create_graph=create_graph, generator=self.generator)[1]
        return frobenius_norm_sq_finite_difference(
            forward, x, n_proj, create_graph=create_graph, generator=self.generator
        )
