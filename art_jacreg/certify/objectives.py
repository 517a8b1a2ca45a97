"""Differentiable worst-case logits for certified training (THEORY.md section 5; pure torch, no ART).

:class:`CertifiedMargins` returns, for labels ``y``, lower bounds ``low_j`` of the margins ``m_j = f_y - f_j`` over
``B_p(x, eps) ∩ box`` that the weights can be trained through. The worst-case logits ``z_j = f_y - low_j``
(``z_y = f_y``) feed :func:`certified_cross_entropy`.

There is one set of rules: the bounds are the certifier's own engines (:mod:`~art_jacreg.certify.intervals`,
:mod:`~art_jacreg.certify.local_jacobian`, :mod:`~art_jacreg.certify.lipschitz`) run on a *live* network (the
certifier's operation classes on the model's own parameters, :class:`~art_jacreg.certify.chain_ops.ChainOps`), with
the operations' differentiable training norm estimates (:meth:`~art_jacreg.certify.ops.base.Op.training_norm`) as
segment bounds in place of the sound ones, and, for ``p = 2``, depth-limited:

* ``bound="global"`` (GloRo, Leino et al. 2021), l2: ``low_j = m_j(x) - eps ||a_j||_2 prod_l ||W_l||_2``
  (:func:`~art_jacreg.certify.lipschitz.row_lipschitz`): ``a_j`` the margin row pulled back through the final affine
  block, the layer norms from power iteration with persistent vectors (updated on every call, detached; the norm
  ``||W u||`` differentiable).
* ``bound="local"``, ``p = 2``: deviation-tightened intervals (:func:`~art_jacreg.certify.intervals.interval_bounds`,
  computed without gradient: they only decide which ReLUs are stable and which pooling windows are dominated on the
  ball), then :func:`~art_jacreg.certify.local_jacobian.local_deviation_lower` from the output: the split
  interval-Jacobian bound ``||(|c_i| + r_i)||_2 L_{0..i} eps`` and the centre-and-ball bound, the rows pulled back
  through the last ``depth`` ReLU/MaxPool layers and finished by the norms of the layers below (with ``depth=None``
  down to the input, where the interval Jacobian with the box is a third family). The global bound is kept too.
* ``p = inf``: the same intervals with gradient (``"global"``: plain IBP, Gowal et al. 2018), the margins bounded
  with the final affine block elided (:func:`~art_jacreg.certify.intervals.backward_lower` from it) or, with
  ``crown=True``, by the linear relaxation of the whole network (CROWN-IBP, what the certifier uses).

Training estimates are never certificates: power iteration under-estimates norms slightly and the bounds run in the
model's dtype. The certificates users see come from :func:`~art_jacreg.certify.certified_radius`.
"""

from __future__ import annotations

import torch

from art_jacreg._validate import validate_norm
from art_jacreg.certify._common import input_set, margin_rows
from art_jacreg.certify.certified_loss import certified_cross_entropy, worst_case_logits
from art_jacreg.certify.chain_ops import ChainOps
from art_jacreg.certify.intervals import backward_lower, interval_bounds
from art_jacreg.certify.lipschitz import row_lipschitz, tail_start, training_segments
from art_jacreg.certify.local_jacobian import local_deviation_lower
from art_jacreg.certify.network import LiveNetwork

__all__ = ["BOUNDS", "CertifiedMargins", "certified_cross_entropy", "worst_case_logits"]

BOUNDS = ("global", "local")


class CertifiedMargins(ChainOps):
    """Differentiable margin lower bounds of a chain model over ``B_p(x, eps) ∩ box``.

    Constructed as :class:`~art_jacreg.certify.chain_ops.ChainOps` (the model, its raw per-sample input shape, ART's
    ``(mean, std)`` preprocessing, the clip box and the power-iteration seed); the model is never modified.
    """

    def margin_lower(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float | torch.Tensor,
        norm: float | str = 2,
        bound: str = "local",
        n_iter: int = 1,
        depth: int | None = 1,
        crown: bool = False,
        logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and margin lower bounds over ``B_p(x, eps) ∩ box``.

        :param x: Raw inputs ``(B, *input_shape)`` in the model's dtype.
        :param y: Labels ``(B,)`` int64.
        :param eps: Radius in raw units (a number or ``(B,)``).
        :param norm: ``2`` or ``inf``.
        :param bound: ``"global"`` or ``"local"``.
        :param n_iter: Power-iteration steps this call (l2).
        :param depth: ``p = 2`` local: how many ReLU/MaxPool layers, counted from the output, the local Jacobian rows
            are pulled back through before the layers below are bounded by their norms; ``None``: down to the input
            (``K - 1`` transposed convolutions per sample, many times the cost of a training step).
        :param crown: ``p = inf`` local: CROWN-IBP on the whole network instead of the interval margin bound.
        :param logits: The model's logits at ``x`` when the caller already has them (e.g. through a
            ``DistributedDataParallel`` wrapper, whose forward must run for its gradient all-reduce); ``None``: the
            model is run here (``p = 2``) or the network's centre values are used (``p = inf``).
        :return: ``(logits (B, K), low (B, K))`` with ``low[b, y_b] = 0``.
        :raises ValueError: On an unknown ``bound``.
        """
        norm = validate_norm(norm)
        if bound not in BOUNDS:
            raise ValueError(f"`bound` must be one of {BOUNDS}, got {bound!r}.")
        net = self.network()
        eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0])
        norms = self.layer_norms(norm, n_iter, net)
        segment = training_segments(norms, norm)
        rows = margin_rows(y.cpu(), self.num_classes)[0].to(device=x.device, dtype=x.dtype)  # (B, K-1, K)
        n = len(net.ops)
        if norm == 2:
            if logits is None:
                logits = self.model(self.preprocess(x))
            value = (rows * logits[:, None]).sum(-1)
            best = value - eps[:, None] * row_lipschitz(net, rows, norm, segment)
            if bound == "global":
                return logits, self._scatter(best, y)
            s = input_set(x, eps, norm, self.clip_values)
            with torch.no_grad():  # the intervals only decide which ReLUs are stable: no gradient needed through them
                fixed = [v.detach() if isinstance(v, torch.Tensor) else v for v in norms]
                bounds = interval_bounds(net, s, training_segments(fixed, norm))
            stop = _depth_boundary(net, depth)
            low = local_deviation_lower(net, bounds, rows, s, spawn={n}, segment=segment, stop=stop)
            return logits, self._scatter(torch.maximum(best, value + low), y)
        # l-inf: no Lipschitz term (measured: with it in the max, training follows the loose sqrt(d) l2 product early
        # on and collapses); IBP with the final affine block elided, plus CROWN-IBP on request
        s = input_set(x, eps, norm, self.clip_values)
        bounds = interval_bounds(net, s, segment, tighten=bound == "local")
        if logits is None:
            assert bounds.centre is not None  # interval_bounds returns the centres
            logits = bounds.centre[-1]
        best = backward_lower(net, s, bounds, rows, n, tail_start(net))
        if bound == "local" and crown:
            best = torch.maximum(best, backward_lower(net, s, bounds, rows, n, 0))
        return logits, self._scatter(best, y)

    def _scatter(self, low: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` with the ``(B, K - 1)`` bounds on the other classes and ``0`` at the label."""
        out = torch.zeros(low.shape[0], self.num_classes, dtype=low.dtype, device=low.device)
        others = margin_rows(y.cpu(), self.num_classes)[1].to(low.device)
        return out.scatter(1, others, low)


def _depth_boundary(net: LiveNetwork, depth: int | None) -> int:
    """The layer boundary the local rows reach: the input of the ``depth``-th ReLU/MaxPool from the output."""
    nonlinear = [i for i, op in enumerate(net.ops) if not op.affine]
    return 0 if depth is None or depth >= len(nonlinear) else nonlinear[len(nonlinear) - depth]
