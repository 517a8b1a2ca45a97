r"""The mathematics of the norm-based generalization bound, on numbers only (numpy; no torch model, no ART).

Given the norms of a network's linear layers and its training margins, this module evaluates the
spectrally-normalised margin bound of Bartlett, Foster and Telgarsky (2017): the spectral complexity
:math:`R_A` (:func:`spectral_complexity`), the complexity term :math:`R_A \|X\|_F / (\gamma n)`
(:func:`margin_bound_term`) and the empirical margin :math:`\gamma` with its margin loss (:func:`empirical_margin`).
The derivations and why these quantities matter for Jacobian regularisation are in the theory page of the docs
(``docs/theory.rst``, section "Robust generalization").

| Paper link: https://arxiv.org/abs/1706.08498 (Bartlett, Foster and Telgarsky 2017)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LOSS_RANGE", "LayerNorms", "spectral_complexity", "margin_bound_term", "empirical_margin"]

#: Range of the loss the margin bound controls (the 0-1 / ramp loss lies in [0, 1]).
LOSS_RANGE = 1.0


@dataclass
class LayerNorms:
    """Norms of one linear layer ``A`` (as an operator on its input; convolutions included).

    :ivar index: Position in the traced network's operation list.
    :ivar kind: ``"Conv2d"``, ``"Linear"`` or ``"Affine"`` (element-wise, e.g. preprocessing).
    :ivar shape: ``(n_out, n_in)`` of the operator matrix.
    :ivar spectral: Upper bound on ``||A||_2`` from :func:`art_jacreg.certify.layer_operator_norms` (never below it).
    :ivar frobenius: ``||A||_F``.
    :ivar l21_transpose: ``||A^T||_{2,1}``, the sum of the l2 norms of the rows of ``A``.
    """

    index: int
    kind: str
    shape: tuple[int, int]
    spectral: float
    frobenius: float
    l21_transpose: float


def spectral_complexity(layers: list[LayerNorms]) -> float:
    r"""Spectral complexity of Bartlett, Foster and Telgarsky (2017), with reference matrices ``M_i = 0``.

    .. math::

        R_A = \Big(\prod_i \|A_i\|_2\Big)
              \Big(\sum_i \frac{\|A_i^\top - M_i^\top\|_{2,1}^{2/3}}{\|A_i\|_2^{2/3}}\Big)^{3/2}
        \quad\text{with } M_i = 0,

    for 1-Lipschitz activations (ReLU). Written as :math:`(\sum_i b_i^{2/3}\prod_{j\ne i}s_j^{2/3})^{3/2}` it is
    increasing in every spectral norm :math:`s_j`, so evaluating it at upper bounds of the :math:`s_j` (what
    :func:`art_jacreg.generalization.layer_norms` returns) gives an upper bound of the true :math:`R_A`.

    :param layers: The layers' norms.
    :return: ``R_A``.
    :raises ValueError: For an empty list.
    """
    if not layers:
        raise ValueError("`layers` is empty; the network has no linear layer.")
    spec = np.array([layer.spectral for layer in layers], dtype=np.float64)
    l21 = np.array([layer.l21_transpose for layer in layers], dtype=np.float64)
    if np.any(spec <= 0):
        return 0.0
    return float(np.prod(spec) * np.sum((l21 / spec) ** (2.0 / 3.0)) ** 1.5)


def margin_bound_term(r_a: float, data_norm: float, margin: float, n: int) -> float:
    r"""The complexity term of the margin bound, :math:`R_A \|X\|_F / (\gamma n)`.

    Bartlett, Foster and Telgarsky (2017, Theorem 1.1) bound the test error by the empirical ramp loss at margin
    :math:`\gamma` plus :math:`\tilde O\big(\frac{\|X\|_F R_A}{\gamma n}\ln W + \sqrt{\ln(1/\delta)/n}\big)`, with
    :math:`\|X\|_F = \sqrt{\sum_i \|x_i\|_2^2}` over the ``n`` training inputs and ``W`` the widest layer. This returns
    exactly :math:`R_A \|X\|_F / (\gamma n)`, *without* the log factors, constants and confidence term, all of which
    only make the full bound larger: a value above 1 therefore means the bound on the error (a number in [0, 1])
    is vacuous.

    :param r_a: Spectral complexity :func:`spectral_complexity`.
    :param data_norm: :math:`\|X\|_F` of the training inputs (raw units, as the network sees them before preprocessing).
    :param margin: :math:`\gamma > 0`; ``nan`` is returned for ``margin <= 0``.
    :param n: Number of training inputs.
    :return: The term (``nan`` when the margin is not positive).
    """
    if not margin > 0:
        return float("nan")
    return float(r_a * data_norm / (margin * n))


def empirical_margin(train_margins: np.ndarray, margin_quantile: float) -> tuple[float, float]:
    """The margin ``gamma`` of the bound and the empirical margin loss at it.

    ``gamma`` is the ``margin_quantile`` quantile of the *positive* training margins (correctly classified points), so
    it is positive whenever one training point is classified correctly; the margin loss is the fraction of training
    points with margin ``< gamma`` (at most the training error plus ``margin_quantile``).

    :param train_margins: Per-sample logit margins on the training inputs (negative when misclassified).
    :param margin_quantile: Quantile of the positive margins used as ``gamma``, in ``(0, 1)``.
    :return: ``(gamma, margin_loss)``; ``(nan, 1.0)`` when no margin is positive.
    :raises ValueError: If ``margin_quantile`` is not in ``(0, 1)``.
    """
    if not 0 < margin_quantile < 1:
        raise ValueError(f"`margin_quantile` must be in (0, 1), got {margin_quantile!r}.")
    train_margins = np.asarray(train_margins, dtype=np.float64)
    positive = train_margins[train_margins > 0]
    if not positive.size:
        return float("nan"), 1.0
    gamma = float(np.quantile(positive, margin_quantile))
    return gamma, float(np.mean(train_margins < gamma))
