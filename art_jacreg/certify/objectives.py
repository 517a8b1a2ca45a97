"""Differentiable worst-case logits for certified training (THEORY.md section 5; pure torch, no ART).

:class:`CertifiedMargins` walks a chain model (``nn.Sequential`` of Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d,
Flatten; Dropout and Identity skipped) with ART-style ``(mean, std)`` preprocessing in front, and returns, for labels
``y``, lower bounds ``low_j`` of the margins ``m_j = f_y - f_j`` over ``B_p(x, eps) ∩ box`` that the weights can be
trained through. The worst-case logits ``z_j = f_y - low_j`` (``z_y = f_y``) feed :func:`certified_cross_entropy`.

* ``bound="global"`` (GloRo, Leino et al. 2021), l2: ``low_j = m_j(x) - eps ||a_j||_2 prod_l ||W_l||_2`` with ``a_j``
  the margin row pulled back through the final affine block, the layer norms from power iteration with persistent
  vectors (updated on every call, detached; the norm ``||W u||`` differentiable).
* ``bound="local"``: the bounds ``certify(method="interval")`` computes, made differentiable. ``p = 2``: interval
  bounds tightened by deviation bounds ``h_i(x) ± delta rho_i`` (as
  :func:`~art_jacreg.certify.intervals.interval_bounds`, computed without gradient: they only decide which ReLUs are
  stable on the ball) give the split interval-Jacobian bound ``||(|c_i| + r_i)||_2 L_{0..i} eps`` and the
  centre-and-ball bound (exact rows with midpoint slopes on undecided ReLUs, as
  :func:`~art_jacreg.certify.local_jacobian.local_deviation_lower`), pulled back through the last ``depth``
  ReLU/MaxPool layers and finished by the layer norms below. ``p = inf``: the same intervals with gradient, the
  margins bounded with the last layer elided (IBP) or, with ``crown=True``, by the linear relaxation of the whole
  network (CROWN-IBP, what the certifier uses). Every family is sound given upper bounds on the layer norms; the
  largest is kept, and the global bound too.
* l-inf ``bound="global"`` is plain IBP (Gowal et al. 2018): intervals without the deviation tightening.

Training estimates are never certificates: power iteration under-estimates norms slightly and the bounds run in the
model's dtype. The certificates users see come from :func:`~art_jacreg.certify.certified_radius`.
"""

from __future__ import annotations

import math

import torch

from art_jacreg.certify._common import margin_rows, validate_norm
from art_jacreg.certify.certified_loss import certified_cross_entropy, worst_case_logits
from art_jacreg.certify.chain_ops import ChainOps, _dot
from art_jacreg.certify.graph import UnsupportedOperationError
from art_jacreg.certify.intervals import relu_relaxation

__all__ = ["BOUNDS", "CertifiedMargins", "certified_cross_entropy", "worst_case_logits"]

BOUNDS = ("global", "local")


class CertifiedMargins(ChainOps):
    """Differentiable margin lower bounds of a chain model over ``B_p(x, eps) ∩ box``.

    :param model: ``nn.Sequential`` of supported layers; its parameters are read, never modified.
    :param input_shape: Raw per-sample input shape, e.g. ``(1, 28, 28)``.
    :param preprocessing: ``None`` or ART's ``(mean, std)`` (scalars or broadcastable arrays): the model sees
        ``(x - mean) / std``; ``eps`` stays in raw input units.
    :param clip_values: ``None`` or the ``(min, max)`` box the attacker stays in.
    :param seed: Seed of the power-iteration start vectors.
    :raises UnsupportedOperationError: For a layer the bounds do not support.
    """

    # ---------------------------------------------------------------- bounds

    def _box(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = eps.reshape(-1, *([1] * (x.ndim - 1)))
        lo, hi = x - e, x + e
        if self.clip_values is not None:
            lo = torch.maximum(lo, torch.minimum(torch.full_like(x, self.clip_values[0]), x))
            hi = torch.minimum(hi, torch.maximum(torch.full_like(x, self.clip_values[1]), x))
        return lo, hi

    def intervals(
        self, x: torch.Tensor, eps: torch.Tensor, norm: float, norms: list[torch.Tensor], tighten: bool = True
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Deviation-tightened interval bounds on every ``h_i`` (as ``interval_bounds``), and the centres ``h_i(x)``.

        :param x: Raw inputs ``(B, *input_shape)``.
        :param eps: Radii ``(B,)``.
        :param norm: ``2`` or ``inf``.
        :param norms: :meth:`layer_norms` for ``norm``.
        :param tighten: Intersect with the deviation bounds (``False``: plain IBP).
        :return: ``(lower, upper, centre)``, lists over the boundaries ``0..n`` (``h_0`` after preprocessing).
        """
        lo, hi = self._box(x, eps)
        dev = (torch.maximum(hi - x, x - lo)).flatten(1)
        delta = torch.minimum(dev.norm(dim=1) if norm == 2 else dev.amax(dim=1), eps)
        lo, hi, c = lo * self.scale + self.shift, hi * self.scale + self.shift, x * self.scale + self.shift
        rho, elementwise, seg = self.scale.abs(), True, self.scale.abs().max()
        lows, ups, cents = [lo], [hi], [c]
        for i, (kind, _, _, _) in enumerate(self.ops):
            if kind in ("relu", "maxpool"):
                lo, hi, c = self._forward(i, lo), self._forward(i, hi), self._forward(i, c)
                box = torch.maximum(hi - c, c - lo).flatten(1)
                box = box.norm(dim=1) if norm == 2 else box.amax(dim=1)
                delta = torch.minimum(delta * seg * norms[i], box)
                rho, elementwise, seg = torch.ones_like(c[0]), True, torch.ones_like(seg)
            else:
                mid, rad = (hi + lo) / 2, (hi - lo) / 2
                absw = None if kind == "flatten" else self._weight(i).abs()
                c = self._forward(i, c)
                lo, hi = (
                    self._forward(i, mid) - self._lin(i, rad, absw),
                    self._forward(i, mid) + self._lin(i, rad, absw),
                )
                if elementwise and norm == 2 and kind in ("linear", "conv"):
                    sq = self._lin(i, rho.square()[None], self._weight(i).square())[0]
                    rho, elementwise = sq.clamp(min=1e-30).sqrt(), False
                else:
                    rho = self._lin(i, rho[None], absw)[0]
                    elementwise = elementwise and kind == "flatten"
                seg = seg * norms[i]
                if tighten:
                    e = delta.reshape(-1, *([1] * rho.ndim)) * rho
                    lo, hi = torch.maximum(lo, c - e), torch.minimum(hi, c + e)
            lows.append(lo)
            ups.append(hi)
            cents.append(c)
        return lows, ups, cents

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
            model is run here.
        :return: ``(logits (B, K), low (B, K))`` with ``low[b, y_b] = 0``.
        :raises ValueError: On an unknown ``bound``.
        """
        norm = validate_norm(norm)
        if bound not in BOUNDS:
            raise ValueError(f"`bound` must be one of {BOUNDS}, got {bound!r}.")
        eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device).expand(x.shape[0])
        norms = self.layer_norms(norm, n_iter)
        rows = margin_rows(y.cpu(), self.num_classes)[0].to(device=x.device, dtype=x.dtype)  # (B, K-1, K)
        a_t = rows
        for i in range(len(self.ops) - 1, self.tail - 1, -1):  # rows of the final affine block on h_tail
            a_t = self._pull(i, a_t)
        dual = a_t.flatten(2).norm(dim=-1) if norm == 2 else a_t.flatten(2).abs().sum(-1)
        lip = dual * self._prefix(norms, self.tail)
        if norm == 2:
            if logits is None:
                logits = self.model(x * self.scale + self.shift)
            value = (rows * logits[:, None]).sum(-1)
            if bound == "global":
                return logits, self._scatter(value - eps[:, None] * lip, y)
            # the intervals only decide which ReLUs are stable: no gradient needed through them
            with torch.no_grad():
                lows, ups, _ = self.intervals(x, eps, norm, [n.detach() for n in norms])
            best = value - eps[:, None] * lip
            nonlin = [i for i, (k, *_) in enumerate(self.ops) if k in ("relu", "maxpool")]
            stop = 0 if depth is None or depth >= len(nonlin) else nonlin[len(nonlin) - depth]
            best = torch.maximum(best, value - eps[:, None] * self._split(rows, lows, ups, norms, stop))
            best = torch.maximum(best, value + self._ball(rows, lows, ups, norms, x, eps, stop))
            return logits, self._scatter(best, y)
        # l-inf: no Lipschitz term (measured: with it in the max, training follows the loose sqrt(d) l2 product early
        # on and collapses); IBP with the last layer elided, plus CROWN-IBP on request
        lows, ups, cents = self.intervals(x, eps, norm, norms, tighten=bound == "local")
        logits = cents[-1] if logits is None else logits
        value = (rows * logits[:, None]).sum(-1)
        t = self.tail
        mid, rad = (ups[t] + lows[t]) / 2 - cents[t], (ups[t] - lows[t]) / 2
        best = value + _dot(a_t, mid) - _dot(a_t.abs(), rad)
        if bound == "local" and crown:
            best = torch.maximum(best, self._crown(rows, lows, ups, x, eps))
        return logits, self._scatter(best, y)

    def _ball(self, rows, lows, ups, norms, x, eps, stop) -> torch.Tensor:
        """Centre-and-ball bound from the output (``local_deviation_lower``).

        Exact rows with midpoint slopes on undecided ReLUs, each adding ``||c_unstable||_2 / 2`` to a ball radius that
        grows with the layer norms; at a boundary ``stop > 0`` finished by the prefix norms,
        ``-(||c|| + rho) L_{0..stop} eps``.
        """
        c, rho = rows, torch.zeros(rows.shape[:2], dtype=rows.dtype, device=rows.device)
        for i in range(len(self.ops) - 1, stop - 1, -1):
            kind = self.ops[i][0]
            if kind == "relu":
                lo_b, hi_b = lows[i][:, None], ups[i][:, None]
                active, unstable = (lo_b >= 0).to(c.dtype), ((lo_b < 0) & (hi_b > 0)).to(c.dtype)
                rho = rho + (c * unstable).flatten(2).norm(dim=-1) / 2
                c = c * (active + unstable / 2)
            elif kind == "maxpool":
                return torch.full_like(rho, -math.inf)
            else:
                c, rho = self._pull(i, c), rho * norms[i]
        if stop > 0:
            return -eps[:, None] * (c.flatten(2).norm(dim=-1) + rho) * self._prefix(norms, stop)
        c, rho = c * self.scale, rho * self.scale.abs().max()
        lo, hi = self._box(x, eps)
        d_lo, d_hi = (lo - x).flatten(1)[:, None], (hi - x).flatten(1)[:, None]
        cf = c.flatten(2)
        corner = torch.minimum(cf * d_lo, cf * d_hi).sum(-1)
        return torch.maximum(corner, -eps[:, None] * cf.norm(dim=-1)) - rho * eps[:, None]

    def _scatter(self, low: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(low.shape[0], self.num_classes, dtype=low.dtype, device=low.device)
        others = margin_rows(y.cpu(), self.num_classes)[1].to(low.device)
        return out.scatter(1, others, low)

    def _split(self, rows, lows, ups, norms, stop) -> torch.Tensor:
        """``min_i ||(|c_i| + r_i)||_2 L_{0..i}`` over the boundaries ``i >= stop`` the interval Jacobian reaches."""
        c, r = rows, torch.zeros_like(rows)
        best: torch.Tensor | None = None
        for i in range(len(self.ops), stop - 1, -1):
            value = (c.abs() + r).flatten(2).norm(dim=-1) * self._prefix(norms, i)
            best = value if best is None else torch.minimum(best, value)
            if i == stop:
                break
            kind = self.ops[i - 1][0]
            if kind == "relu":
                lo_b, hi_b = lows[i - 1][:, None], ups[i - 1][:, None]
                lo, hi = c - r, c + r
                active, unstable = lo_b >= 0, (lo_b < 0) & (hi_b > 0)
                lo = torch.where(active, lo, torch.where(unstable, lo.clamp(max=0), 0.0))
                hi = torch.where(active, hi, torch.where(unstable, hi.clamp(min=0), 0.0))
                c, r = (hi + lo) / 2, (hi - lo) / 2
            elif kind in ("linear", "conv", "flatten"):
                absw = None if kind == "flatten" else self._weight(i - 1).abs()
                c, r = self._pull(i - 1, c), self._pull(i - 1, r, absw)
            else:  # pooling: stop the local part here (the global prefix above is still sound)
                break
        if best is None:
            raise ValueError(f"`stop` must be at most the number of operations ({len(self.ops)}), got {stop}.")
        return best

    def _crown(self, rows, lows, ups, x, eps) -> torch.Tensor:
        """CROWN-IBP: lower bound of ``rows · f(x')`` over the box, every ReLU relaxed on its interval."""
        a, const = rows, torch.zeros(rows.shape[:2], dtype=rows.dtype, device=rows.device)
        for i in range(len(self.ops) - 1, -1, -1):
            kind, _, _, out = self.ops[i]
            if kind == "relu":
                low_slope, up_slope, up_icpt = relu_relaxation(lows[i][:, None], ups[i][:, None])
                neg = a.clamp(max=0)
                const = const + (neg * up_icpt).flatten(2).sum(-1)
                a = a * low_slope + neg * (up_slope - low_slope)
            elif kind == "maxpool":
                raise UnsupportedOperationError("crown=True does not support MaxPool2d; use crown=False")
            else:
                bias = None if kind == "flatten" else self._affine(i).bias
                if bias is not None:
                    const = const + (a * bias.reshape(-1, *([1] * (len(out) - 1)))).flatten(2).sum(-1)
                a = self._pull(i, a)
        const = const + (a * self.shift).flatten(2).sum(-1)
        a = a * self.scale
        lo, hi = self._box(x, eps)
        return const + _dot(a, (hi + lo) / 2) - _dot(a.abs(), (hi - lo) / 2)
