r"""The paper's per-sample first-order robust losses (Wu & Li 2024, THEORY.md section 1).

For cross-entropy :math:`\ell` and a threat ball :math:`B_p(x, \varepsilon)`, linearising the network at ``x`` gives

* the first-order robust loss :math:`\ell_{FO} = \ell + \varepsilon \|\nabla_x \ell\|_{p^*}` (exact maximum of the
  linearised loss over the ball), and
* the label-free Jacobian surrogates that upper-bound it,
  :math:`\hat\ell_2 = \ell + \sqrt{2}\,\varepsilon \|J\|_F`
  and :math:`\hat\ell_\infty = \ell + \varepsilon \|J\|_{1,1}`.

So :math:`\ell \le \ell_{FO} \le \hat\ell_p` always. These are **first-order estimates, not certificates**: the
linearisation ignores curvature and an attack can exceed them at finite :math:`\varepsilon`. Sound bounds are in
:mod:`art_jacreg.certify`.

| Paper link: https://arxiv.org/abs/2412.12449
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from art_jacreg._validate import validate_eps, validate_norm
from art_jacreg.norms import frobenius_norm_sq, l11_norm

__all__ = ["FirstOrderBounds", "first_order_bounds"]


class FirstOrderBounds(NamedTuple):
    r"""Per-sample losses, each a ``(B,)`` tensor.

    :ivar loss: Cross-entropy at the clean input.
    :ivar first_order_loss: :math:`\ell + \varepsilon \|\nabla_x \ell\|_{p^*}`, a first-order estimate.
    :ivar jacobian_surrogate_loss: The paper's label-free surrogate, a first-order estimate that upper-bounds
        ``first_order_loss``.
    """

    loss: torch.Tensor
    first_order_loss: torch.Tensor
    jacobian_surrogate_loss: torch.Tensor


def first_order_bounds(
    func: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, eps: float, norm: float | str
) -> FirstOrderBounds:
    r"""The paper's first-order robust-loss estimates per sample, for an l2 or l-inf threat of radius ``eps``.

    * ``norm=2``: :math:`\ell_{FO} = \ell + \varepsilon\|\nabla_x\ell\|_2`, surrogate
      :math:`\ell + \sqrt{2}\,\varepsilon\|J\|_F` (since :math:`\|g\|_2 \le \sqrt 2` for the softmax gradient).
    * ``norm=inf``: :math:`\ell_{FO} = \ell + \varepsilon\|\nabla_x\ell\|_1`, surrogate
      :math:`\ell + \varepsilon\|J\|_{1,1}` (since :math:`\|g\|_\infty \le 1`).

    These are first-order **estimates**, not certificates: an attack may exceed them.

    :param func: Map from an input batch ``(B, *input_shape)`` (raw units) to logits ``(B, K)``.
    :param x: Input batch.
    :param y: Integer labels ``(B,)``.
    :param eps: Radius of the threat ball, in the units of ``x`` (>= 0).
    :param norm: ``2`` or ``float("inf")``, or a spelling of :func:`art_jacreg._validate.validate_norm`
        (``"l2"``, ``"linf"``, ...).
    :return: :class:`FirstOrderBounds` of detached ``(B,)`` tensors.
    :raises TypeError: If ``eps`` is not a real number.
    :raises ValueError: For a negative or non-finite ``eps``, an unknown ``norm`` or bad labels ``y``.
    """
    eps = validate_eps(eps)
    norm = validate_norm(norm)
    y = torch.as_tensor(y, dtype=torch.long, device=x.device)
    if y.shape != (x.shape[0],):
        raise ValueError(f"`y` must hold one integer label per sample, shape ({x.shape[0]},), got {tuple(y.shape)}.")
    x_in = x.detach().clone().requires_grad_(True)
    logits = func(x_in)
    if y.numel() and (y.min() < 0 or y.max() >= logits.shape[1]):
        raise ValueError(f"`y` holds labels outside [0, {logits.shape[1] - 1}].")
    loss = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x_in)
    grad = grad.reshape(x.shape[0], -1)
    if norm == 2:
        first_order = loss + eps * grad.norm(p=2, dim=1)
        surrogate = loss + math.sqrt(2.0) * eps * frobenius_norm_sq(func, x).clamp_min(0).sqrt()
    else:
        first_order = loss + eps * grad.abs().sum(dim=1)
        surrogate = loss + eps * l11_norm(func, x)
    return FirstOrderBounds(loss.detach(), first_order.detach(), surrogate.detach())
