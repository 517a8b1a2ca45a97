"""The certified training loss on worst-case logits (THEORY.md section 5; pure torch, no ART)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["certified_cross_entropy", "worst_case_logits"]


def worst_case_logits(logits: torch.Tensor, low: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_j = f_y - low_j`` for ``j != y`` and ``z_y = f_y``: the logits the certificate must beat.

    :param logits: ``(B, K)``.
    :param low: Margin lower bounds ``(B, K)`` (``0`` at ``y``).
    :param y: Labels ``(B,)``.
    :return: ``(B, K)``.
    """
    return logits.gather(1, y[:, None]) - low


def certified_cross_entropy(
    logits: torch.Tensor,
    low: torch.Tensor,
    y: torch.Tensor,
    kappa: float = 0.0,
    variant: str = "ce",
    cross_entropy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> torch.Tensor:
    """``kappa CE(f(x), y) + (1 - kappa) L_rob`` with ``L_rob`` cross-entropy on the worst-case logits.

    :param logits: ``(B, K)``.
    :param low: Margin lower bounds ``(B, K)``.
    :param y: Labels ``(B,)``.
    :param kappa: Weight of the clean loss in ``[0, 1]``.
    :param variant: ``"ce"`` (worst-case logits) or ``"bottom"`` (GloRo: the clean logits plus one bottom logit
        ``max_{j != y} z_j``).
    :param cross_entropy: The cross-entropy ``ce(logits, y)`` (batch mean) of both terms; ``"bottom"`` calls it on
        ``K + 1`` logits, so it must not carry per-class weights there.
    :return: Scalar loss.
    :raises ValueError: On an unknown variant.
    """
    z = worst_case_logits(logits, low, y)
    if variant == "ce":
        robust = cross_entropy(z, y)
    elif variant == "bottom":
        bottom = z.scatter(1, y[:, None], -torch.inf).amax(dim=1, keepdim=True)
        robust = cross_entropy(torch.cat([logits, bottom], dim=1), y)
    else:
        raise ValueError(f"`variant` must be 'ce' or 'bottom', got {variant!r}.")
    if kappa == 0:
        return robust
    return kappa * cross_entropy(logits, y) + (1 - kappa) * robust
