r"""The certified-training objective of :class:`art_jacreg.CertifiedJacobianTrainer` (torch only, no ART).

Per batch, at the scheduled radius ``eps_t`` and clean-loss weight ``kappa_t``:

    kappa_t CE(f(x), y) + (1 - kappa_t) CE(z(x, eps_t), y)  +  reg_weight * mean regulariser,

where ``z_j = f_y(x) - low_j(x, eps_t)`` are the worst-case logits built from lower bounds ``low_j`` of the margins
``f_y - f_j`` over the threat ball (:class:`~art_jacreg.certify.objectives.CertifiedMargins`) and the regulariser is
the paper's ``||J||_F^2`` / ``||J||_{1,1}`` of :class:`~art_jacreg.training.objectives.JacobianRegularizedObjective`
(computed from the same logits). The schedule: ``eps_t = 0`` during the first ``warmup`` fraction of the run's steps,
then a linear ramp to ``eps * train_eps_factor`` over the next ``ramp`` fraction, constant after; ``kappa_t`` moves
linearly from ``kappa_start`` to ``kappa`` along the same ramp.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from art_jacreg.certify.certified_loss import certified_cross_entropy
from art_jacreg.certify.objectives import CertifiedMargins
from art_jacreg.training.checks import check_logits
from art_jacreg.training.loop import Forward, ObjectiveOutput
from art_jacreg.training.objectives import CrossEntropy, JacobianRegularizedObjective

__all__ = ["EpsSchedule", "CertifiedObjective"]


class EpsSchedule(NamedTuple):
    """The radius and clean-loss schedule of a certified run.

    :ivar eps: Final training radius (the target ``eps`` times ``train_eps_factor``).
    :ivar warmup: Fraction of the run's steps at radius 0 (plain ``CE`` at ``kappa_start``).
    :ivar ramp: Fraction of the steps over which the radius grows linearly to ``eps``.
    :ivar kappa_start: Clean-loss weight at the start of the ramp.
    :ivar kappa: Clean-loss weight from the end of the ramp on.
    """

    eps: float
    warmup: float
    ramp: float
    kappa_start: float
    kappa: float

    def at(self, step: int, total: int) -> tuple[float, float]:
        """``(eps_t, kappa_t)`` at optimizer step ``step`` (0-based) of a run of ``total`` steps.

        :param step: The step.
        :param total: Steps of the whole run.
        :return: The radius and the clean-loss weight of that step.
        """
        start, length = self.warmup * total, self.ramp * total
        if step < start:
            progress = 0.0
        elif length <= 0:
            progress = 1.0
        else:
            progress = min(1.0, (step - start + 1) / length)
        return self.eps * progress, self.kappa_start + (self.kappa - self.kappa_start) * progress


class CertifiedObjective:
    """Certified cross-entropy on worst-case logits, with an eps schedule and the optional Jacobian regulariser.

    :param margins: The differentiable margin bounds of the trained model.
    :param norm: ``2.0`` or ``math.inf``.
    :param bound: ``"global"`` or ``"local"`` (see :meth:`CertifiedMargins.margin_lower`).
    :param schedule: The :class:`EpsSchedule`.
    :param loss: ``"ce"`` (cross-entropy on all worst-case logits) or ``"bottom"`` (GloRo's bottom logit).
    :param depth: l2 ``"local"``: ReLU/MaxPool layers the local rows pass (``None``: all).
    :param crown: l-inf ``"local"``: CROWN-IBP margins.
    :param n_power_iterations: Power-iteration steps per batch (l2).
    :param jacobian: The regulariser objective (its ``reg_weight`` > 0), or ``None``.
    :param cross_entropy: The cross-entropy (see :func:`~art_jacreg.training.objectives.cross_entropy_like`).
    :param nb_classes: The first batch's logits are checked against it.
    """

    #: Advice appended to the error of a non-finite loss.
    nonfinite_advice = "Lower the learning rate, eps or reg_weight, or lengthen the eps ramp."

    def __init__(
        self,
        margins: CertifiedMargins,
        norm: float,
        bound: str,
        schedule: EpsSchedule,
        loss: str,
        depth: int | None,
        crown: bool,
        n_power_iterations: int,
        jacobian: JacobianRegularizedObjective | None,
        cross_entropy: CrossEntropy,
        nb_classes: int,
    ) -> None:
        self.margins, self.norm, self.bound, self.schedule = margins, norm, bound, schedule
        self.loss, self.depth, self.crown, self.n_power_iterations = loss, depth, crown, n_power_iterations
        self.jacobian, self.cross_entropy, self.nb_classes = jacobian, cross_entropy, nb_classes
        self.step, self.total_steps = 0, 1
        self._outputs_checked = False

    @property
    def generator(self) -> torch.Generator | None:
        """The random generator of the regulariser's estimator (``None`` without a regulariser)."""
        return None if self.jacobian is None else self.jacobian.generator

    @generator.setter
    def generator(self, value: torch.Generator) -> None:
        if self.jacobian is not None:
            self.jacobian.generator = value

    def start(self, nb_epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        """Set the run's length and its first step (a resumed run continues the schedule).

        :param nb_epochs: Epochs of the run.
        :param steps_per_epoch: Optimizer steps per epoch.
        :param start_epoch: Epochs already trained.
        """
        self.total_steps = max(1, nb_epochs * steps_per_epoch)
        self.step = start_epoch * steps_per_epoch

    def __call__(self, forward: Forward, x: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        """The loss of one batch and its parts ``cross_entropy`` (clean), ``certified_loss`` (on the worst-case
        logits; the clean loss at radius 0), ``regularizer`` (``None`` if not computed), ``eps`` and ``bound_certified``
        (fraction of the batch whose *training* bound certifies it at ``eps``; a training estimate, not a
        certificate).

        :param forward: Map from an input batch to logits.
        :param x: Input batch.
        :param y: Class indices.
        :return: The :class:`~art_jacreg.training.loop.ObjectiveOutput`.
        """
        eps, kappa = self.schedule.at(self.step, self.total_steps)
        self.step += 1
        regularize = self.jacobian is not None
        x_in = x.detach().clone().requires_grad_(regularize)
        logits = forward(x_in)
        if not self._outputs_checked:
            check_logits(logits, self.nb_classes)
            self._outputs_checked = True
        ce = self.cross_entropy(logits, y)
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == y).sum()
        # At radius 0 the worst-case logits are the logits: the certified loss is the clean one.
        robust, certified = ce.detach(), correct.to(logits.dtype) / y.shape[0]
        if eps > 0:
            _, low = self.margins.margin_lower(
                x.detach(), y, eps, self.norm, self.bound, self.n_power_iterations, self.depth, self.crown, logits
            )
            loss = certified_cross_entropy(logits, low, y, kappa, self.loss, self.cross_entropy)
            with torch.no_grad():
                robust = certified_cross_entropy(logits, low, y, 0.0, self.loss, self.cross_entropy)
                worst = low.scatter(1, y[:, None], math.inf).amin(dim=1)
                certified = (worst > 0).to(logits.dtype).mean()
        else:
            loss = ce
        reg = self.jacobian.regularizer(x_in, logits).mean() if self.jacobian is not None else None
        if reg is not None:
            loss = loss + self.jacobian.reg_weight * reg  # type: ignore[union-attr]
        parts: dict[str, Any] = {
            "cross_entropy": ce.detach(),
            "certified_loss": robust,
            "regularizer": None if reg is None else reg.detach(),
            "eps": logits.new_full((), eps),
            "bound_certified": certified,
        }
        return ObjectiveOutput(loss, parts, correct)
