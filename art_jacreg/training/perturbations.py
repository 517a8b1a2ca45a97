"""Cheap perturbed points for :mod:`art_jacreg.training.jr_variants` (torch only, no ART): a random start in an l2
or l-inf ball and one gradient step (FGSM with random start, Wong, Rice and Kolter 2020), clipped to the input box.

| Paper link: https://arxiv.org/abs/2001.03994 (Wong, Rice and Kolter 2020, fast adversarial training)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["FGSM_STEP", "direction", "perturb"]

Forward = Callable[[torch.Tensor], torch.Tensor]

#: FGSM step size as a multiple of ``eps`` (Wong et al. 2020).
FGSM_STEP = 1.25


def direction(g: torch.Tensor, norm: float) -> torch.Tensor:
    """Unit steepest-ascent direction of a gradient: ``g / ||g||_2`` (l2) or ``sign(g)`` (l-inf), per sample.

    :param g: Gradient ``(B, ...)``.
    :param norm: ``2.0`` or ``math.inf``.
    :return: Tensor shaped like ``g``.
    """
    if norm == 2:
        length = g.flatten(1).norm(dim=1).clamp_min(1e-12)
        return g / length.view(-1, *([1] * (g.dim() - 1)))
    return g.sign()


def _clip(x: torch.Tensor, clip_values: Any) -> torch.Tensor:
    if clip_values is None:
        return x
    low = torch.as_tensor(clip_values[0], dtype=x.dtype, device=x.device)
    high = torch.as_tensor(clip_values[1], dtype=x.dtype, device=x.device)
    return torch.maximum(torch.minimum(x, high), low)


def _project(delta: torch.Tensor, norm: float, eps: float) -> torch.Tensor:
    if norm == 2:
        length = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (eps / length).clamp(max=1.0)
        return delta * scale.view(-1, *([1] * (delta.dim() - 1)))
    return delta.clamp(-eps, eps)


def perturb(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    norm: float,
    eps: float,
    kind: str,
    clip_values: Any,
    generator: torch.Generator,
) -> torch.Tensor:
    """A cheap perturbed copy of ``x`` in the ``eps`` ball, clipped to ``clip_values`` (detached).

    :param forward: Map from an input batch to logits (used by ``"fgsm"``).
    :param x: Input batch.
    :param y: Class indices.
    :param norm: ``2.0`` or ``math.inf``.
    :param eps: Radius (raw input units).
    :param kind: ``"random"`` or ``"fgsm"`` (random start plus one step of ``1.25 eps``, projected).
    :param clip_values: ``(min, max)`` of the inputs, or ``None``.
    :param generator: Random generator of the start.
    :return: Tensor shaped like ``x``, no graph.
    """
    x = x.detach()
    if norm == 2:
        unit = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        unit = unit / unit.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        radius = torch.rand((x.shape[0],), generator=generator, dtype=x.dtype) * eps
        delta = (unit * radius.view(-1, *([1] * (x.dim() - 1)))).to(x.device)
    else:
        delta = ((torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1) * eps).to(x.device)
    delta = _clip(x + delta, clip_values) - x
    if kind == "fgsm":
        x_start = (x + delta).requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(F.cross_entropy(forward(x_start), y), x_start)
        delta = _project(delta + FGSM_STEP * eps * direction(g, norm), norm, eps)
    return _clip(x + delta, clip_values).detach()
