r"""Variants of the Jacobian-regularized objective (torch only, no ART).

:class:`VariantObjective` extends :class:`~art_jacreg.training.objectives.JacobianRegularizedObjective` with

* ``target``: what is regularised. ``"logits"`` is the paper's Jacobian norm of the logits (the base objective);
  ``"loss"`` the input gradient of the per-sample cross-entropy (Ross and Doshi-Velez 2018); ``"margin"`` the input
  gradient of the margin :math:`f_y - \max_{j \ne y} f_j`. For a per-sample scalar :math:`s` with input gradient
  :math:`g = \nabla_x s` the regulariser is :math:`\|g\|_2^2` (``norm=2``) or :math:`\|g\|_1` (``norm=inf``, the
  dual norm of the threat).
* ``finite_difference``: replace :math:`\|g\|` by the change of :math:`s` over a step of size ``eps`` along the
  (detached) steepest-ascent direction :math:`d` (:math:`g / \|g\|_2` for l2, :math:`\mathrm{sign}(g)` for l-inf;
  Finlay and Oberman 2019): :math:`((s(x + \epsilon d) - s(x)) / \epsilon)^2` for l2 and
  :math:`|s(x + \epsilon d) - s(x)| / \epsilon` for l-inf. At small ``eps`` these tend to :math:`\|g\|_2^2` and
  :math:`\|g\|_1`; at the attack radius they see the curvature a first-order term misses. No double backprop.
* ``perturbation``: evaluate the terms at a cheaply perturbed point ``x'`` in the ``eps`` ball (clipped to the
  input box): ``"random"`` (uniform in the l-inf ball; for l2 a uniform direction with a radius uniform in
  ``[0, eps]``) or ``"fgsm"`` (that random start plus one signed / normalised gradient step of ``1.25 eps``,
  projected; Wong, Rice and Kolter 2020). ``perturbed_terms="both"`` puts the cross-entropy and the regulariser at
  ``x'``, ``"regularizer"`` only the regulariser (the cross-entropy stays at ``x``). With ``"both"`` and
  ``reg_weight=0`` this is single-step adversarial training alone.
* ``reg_warmup_epochs=k``: the weight of epoch ``e`` (1-based) is ``reg_weight * min(1, e / (k + 1))``.

Everything the loss depends on is built with ``torch.autograd.grad(..., create_graph=True)`` and then one ordinary
backward of the total loss (the pattern that also works under ``DistributedDataParallel``); the attack step of
``"fgsm"`` and the direction of ``finite_difference`` are detached gradients w.r.t. the input only.

| Paper link: https://arxiv.org/abs/1711.09404 (Ross and Doshi-Velez 2018, input gradient regularization)
| Paper link: https://arxiv.org/abs/1905.11468 (Finlay and Oberman 2019, finite-difference gradient regularization)
| Paper link: https://arxiv.org/abs/2001.03994 (Wong, Rice and Kolter 2020, fast adversarial training)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from art_jacreg.training.checks import check_logits
from art_jacreg.training.loop import Forward, ObjectiveOutput
from art_jacreg.training.objectives import JacobianRegularizedObjective, check_jacobian_estimator
from art_jacreg.training.perturbations import direction, perturb

__all__ = [
    "TARGETS",
    "PERTURBATIONS",
    "PERTURBED_TERMS",
    "check_variant_settings",
    "per_sample_scalar",
    "input_gradient_penalty",
    "finite_difference_penalty",
    "warmup_factor",
    "VariantObjective",
]

#: Values of ``target``.
TARGETS = ("logits", "loss", "margin")
#: Values of ``perturbation`` other than ``None``.
PERTURBATIONS = ("random", "fgsm")
#: Values of ``perturbed_terms``.
PERTURBED_TERMS = ("both", "regularizer")


def check_variant_settings(
    target: object,
    perturbation: object,
    perturbed_terms: object,
    finite_difference: object,
    eps: object,
    reg_warmup_epochs: object,
    n_projections: object,
    n_rows: object,
) -> tuple[str, str | None, str, bool, float | None, int]:
    """Validate the variant options (see the module docstring).

    :param target: One of :data:`TARGETS`.
    :param perturbation: ``None`` or one of :data:`PERTURBATIONS`.
    :param perturbed_terms: One of :data:`PERTURBED_TERMS`.
    :param finite_difference: A bool; ``True`` needs ``target`` ``"loss"`` or ``"margin"`` and ``eps``.
    :param eps: ``None`` or a finite real ``> 0`` (raw input units); required by, and only used with,
        ``perturbation`` or ``finite_difference``.
    :param reg_warmup_epochs: An integer ``>= 0``.
    :param n_projections: The ``n_projections`` setting (only its default ``1`` or ``None`` is allowed unless
        ``target="logits"``).
    :param n_rows: The ``n_rows`` setting (must be ``None`` unless ``target="logits"``).
    :return: ``(target, perturbation, perturbed_terms, finite_difference, eps, reg_warmup_epochs)`` normalised.
    :raises TypeError: On a value of the wrong type.
    :raises ValueError: On a value out of range or an inconsistent combination.
    """
    if not isinstance(target, str) or target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}.")
    if perturbation is not None and (not isinstance(perturbation, str) or perturbation not in PERTURBATIONS):
        raise ValueError(f"`perturbation` must be None or one of {PERTURBATIONS}, got {perturbation!r}.")
    if not isinstance(perturbed_terms, str) or perturbed_terms not in PERTURBED_TERMS:
        raise ValueError(f"`perturbed_terms` must be one of {PERTURBED_TERMS}, got {perturbed_terms!r}.")
    if not isinstance(finite_difference, bool):
        raise TypeError(f"`finite_difference` must be a bool, got {type(finite_difference).__name__}.")
    if eps is not None:
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(f"`eps` must be None or a real number > 0, got {type(eps).__name__}.")
        if not math.isfinite(float(eps)) or float(eps) <= 0:
            raise ValueError(f"`eps` must be a finite number > 0, got {eps!r}.")
        eps = float(eps)
    needs_eps = perturbation is not None or finite_difference
    if needs_eps and eps is None:
        raise ValueError(
            "`eps` (the radius in raw input units) is required with `perturbation` or `finite_difference`."
        )
    if not needs_eps and eps is not None:
        raise ValueError(
            f"`eps`={eps!r} is only used with `perturbation` or `finite_difference=True`; set one or eps=None."
        )
    if finite_difference and target == "logits":
        raise ValueError('`finite_difference=True` needs target="loss" or target="margin" (a per-sample scalar).')
    if isinstance(reg_warmup_epochs, bool) or not isinstance(reg_warmup_epochs, numbers.Integral):
        raise TypeError(f"`reg_warmup_epochs` must be an integer >= 0, got {type(reg_warmup_epochs).__name__}.")
    if reg_warmup_epochs < 0:
        raise ValueError(f"`reg_warmup_epochs` must be >= 0, got {reg_warmup_epochs}.")
    if target != "logits" and n_rows is not None:
        raise ValueError(f'`n_rows` applies only to target="logits", got n_rows={n_rows!r} with target={target!r}.')
    if target != "logits" and n_projections not in (1, None):
        raise ValueError(
            f'`n_projections` applies only to target="logits", got n_projections={n_projections!r} with '
            f"target={target!r} (leave it at 1 or None)."
        )
    return target, perturbation, perturbed_terms, finite_difference, eps, int(reg_warmup_epochs)


def per_sample_scalar(target: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The per-sample scalar whose input gradient is regularised: cross-entropy or margin ``(B,)``.

    :param target: ``"loss"`` (unweighted cross-entropy) or ``"margin"`` (``f_y - max_{j != y} f_j``).
    :param logits: Logits ``(B, K)``.
    :param y: Class indices ``(B,)``.
    :return: Tensor ``(B,)``.
    """
    if target == "loss":
        return F.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    return true - others.max(dim=1).values


def _dual_norm(g: torch.Tensor, norm: float) -> torch.Tensor:
    """``||g||_2^2`` (norm 2) or ``||g||_1`` (norm inf) per sample."""
    flat = g.flatten(1)
    return flat.pow(2).sum(dim=1) if norm == 2 else flat.abs().sum(dim=1)


def input_gradient_penalty(
    x: torch.Tensor, values: torch.Tensor, norm: float, create_graph: bool = True
) -> torch.Tensor:
    """``||grad_x s||_2^2`` (``norm=2``) or ``||grad_x s||_1`` (``norm=inf``) per sample.

    :param x: Input batch that requires grad.
    :param values: Per-sample scalars ``(B,)`` computed from ``x`` (samples independent).
    :param norm: ``2.0`` or ``math.inf``.
    :param create_graph: Keep the graph (training: differentiable w.r.t. the weights).
    :return: Tensor ``(B,)``.
    """
    (g,) = torch.autograd.grad(values.sum(), x, create_graph=create_graph, retain_graph=True)
    return _dual_norm(g, norm)


def finite_difference_penalty(
    forward: Forward, x: torch.Tensor, values: torch.Tensor, y: torch.Tensor, target: str, norm: float, step: float
) -> torch.Tensor:
    """Finite-difference gradient penalty along the detached steepest-ascent direction (Finlay and Oberman 2019).

    :param forward: Map from an input batch to logits.
    :param x: Input batch that requires grad (from which ``values`` were computed).
    :param values: Per-sample scalars ``(B,)`` of ``x`` (with their graph).
    :param y: Class indices.
    :param target: ``"loss"`` or ``"margin"``.
    :param norm: ``2.0`` or ``math.inf``.
    :param step: Step size ``eps`` (raw input units).
    :return: ``((s(x + eps d) - s(x)) / eps)^2`` (l2) or ``|s(x + eps d) - s(x)| / eps`` (l-inf), ``(B,)``.
    """
    (g,) = torch.autograd.grad(values.sum(), x, retain_graph=True)
    x_step = x.detach() + step * direction(g, norm)
    diff = (per_sample_scalar(target, forward(x_step), y) - values) / step
    return diff.pow(2) if norm == 2 else diff.abs()


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """Fraction of ``reg_weight`` used in ``epoch`` (1-based): ``min(1, epoch / (warmup_epochs + 1))``.

    :param epoch: The epoch, from 1.
    :param warmup_epochs: Length of the linear warm-up (``0``: none).
    :return: A number in ``(0, 1]``.
    """
    return min(1.0, epoch / (warmup_epochs + 1))


class VariantObjective(JacobianRegularizedObjective):
    """:class:`JacobianRegularizedObjective` with a regularised ``target``, finite differences, perturbed points
    and a warm-up (see the module docstring). With the defaults it computes exactly the base objective.

    :param norm: ``2.0`` or ``math.inf``.
    :param reg_weight: Weight ``>= 0`` of the regulariser after the warm-up.
    :param n_projections: ``target="logits"``, ``norm=2``: random projections, ``None`` exact.
    :param n_rows: ``target="logits"``, ``norm=inf``: rows sampled, ``None`` exact.
    :param generator: Random generator (projections, rows, random starts).
    :param cross_entropy: The training cross-entropy (mean).
    :param nb_classes: Number of classes (first batch's outputs are checked), or ``None``.
    :param target: ``"logits"``, ``"loss"`` or ``"margin"``.
    :param perturbation: ``None``, ``"random"`` or ``"fgsm"``.
    :param perturbed_terms: ``"both"`` or ``"regularizer"``.
    :param finite_difference: Finite-difference penalty with step ``eps``.
    :param eps: Radius / step in raw input units (with ``perturbation`` or ``finite_difference``).
    :param reg_warmup_epochs: Length of the linear warm-up of ``reg_weight`` in epochs.
    :param clip_values: ``(min, max)`` of the inputs (perturbed points are clipped to it), or ``None``.
    :param jacobian_estimator: Estimator of ``||J||_F^2`` (``target="logits"``, ``norm=2``): ``"vjp"``, ``"jvp"`` or
        ``"finite_difference"``.
    """

    def __init__(
        self,
        norm: float,
        reg_weight: float,
        n_projections: int | None,
        n_rows: int | None,
        generator: torch.Generator,
        cross_entropy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        nb_classes: int | None = None,
        target: str = "logits",
        perturbation: str | None = None,
        perturbed_terms: str = "both",
        finite_difference: bool = False,
        eps: float | None = None,
        reg_warmup_epochs: int = 0,
        clip_values: Any = None,
        jacobian_estimator: str = "vjp",
    ) -> None:
        check_jacobian_estimator(jacobian_estimator, norm, n_projections, target)
        super().__init__(
            norm, reg_weight, n_projections, n_rows, generator, cross_entropy, nb_classes, jacobian_estimator
        )
        self.target, self.perturbation, self.perturbed_terms, self.finite_difference, self.eps, self.warmup = (
            check_variant_settings(
                target, perturbation, perturbed_terms, finite_difference, eps, reg_warmup_epochs, n_projections, n_rows
            )
        )
        self.clip_values = clip_values
        self.weight_factor = 1.0 if self.warmup == 0 else warmup_factor(1, self.warmup)

    def _radius(self) -> float:
        """``eps``, which :func:`check_variant_settings` requires with ``perturbation`` or ``finite_difference``."""
        if self.eps is None:
            raise RuntimeError("`eps` is required with `perturbation` or `finite_difference`; it is None.")
        return self.eps

    def start_epoch(self, epoch: int) -> None:
        """Set the warm-up factor of ``epoch`` (1-based).

        :param epoch: The epoch about to run.
        """
        self.weight_factor = warmup_factor(epoch, self.warmup)

    def __call__(self, forward: Forward, x: torch.Tensor, y: torch.Tensor) -> ObjectiveOutput:
        """The loss of one batch and its parts ``cross_entropy`` and ``regularizer`` (unweighted batch mean).

        :param forward: Map from an input batch to logits.
        :param x: Input batch.
        :param y: Class indices.
        :return: The :class:`~art_jacreg.training.loop.ObjectiveOutput`.
        """
        weight = self.reg_weight * self.weight_factor
        regularize = weight > 0
        x_reg = x.detach()
        # With perturbed_terms="both" the cross-entropy is taken at the perturbed point even when reg_weight is 0
        # (then this is fast adversarial training alone).
        if self.perturbation is not None and (regularize or self.perturbed_terms == "both"):
            x_reg = perturb(
                forward, x, y, self.norm, self._radius(), self.perturbation, self.clip_values, self.generator
            )
        split = regularize and self.perturbation is not None and self.perturbed_terms == "regularizer"
        # One forward pass: the clean points (cross-entropy) and the perturbed ones (regulariser) are concatenated.
        x_in = (torch.cat([x.detach(), x_reg]) if split else x_reg).clone().requires_grad_(regularize)
        logits_all = self.forward_logits(forward, x_in, regularize)
        if not self._outputs_checked:
            check_logits(logits_all, self.nb_classes)  # type: ignore[arg-type]
            self._outputs_checked = True
        batch = x.shape[0]
        logits = logits_all[:batch]
        reg = None
        if regularize:
            reg = self.variant_regularizer(forward, x_in, logits_all, y.repeat(2) if split else y)
            reg = reg[batch:].mean() if split else reg.mean()
        ce = self.cross_entropy(logits, y)
        loss = ce if reg is None else ce + weight * reg
        with torch.no_grad():
            correct = (logits.argmax(dim=1) == y).sum()
        parts = {"cross_entropy": ce.detach(), "regularizer": None if reg is None else reg.detach()}
        return ObjectiveOutput(loss, parts, correct)

    def variant_regularizer(
        self, forward: Forward, x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, create_graph: bool = True
    ) -> torch.Tensor:
        """Per-sample regulariser ``(B,)`` of the configured target (``x`` requires grad, ``logits = forward(x)``).

        :param forward: Map from an input batch to logits (used by ``finite_difference``).
        :param x: Input batch that requires grad.
        :param logits: Logits of ``x``.
        :param y: Class indices.
        :param create_graph: Keep the graph (training).
        :return: Tensor ``(B,)``.
        """
        if self.target == "logits":
            return self.regularizer(x, logits, create_graph=create_graph, forward=forward)
        values = per_sample_scalar(self.target, logits, y)
        if self.finite_difference:
            return finite_difference_penalty(forward, x, values, y, self.target, self.norm, self._radius())
        return input_gradient_penalty(x, values, self.norm, create_graph=create_graph)
