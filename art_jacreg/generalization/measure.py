r"""Measurements of a trained classifier for the generalization report: layer norms, margins, Jacobian norms, gaps.

Everything the robust-generalization theory of Wu and Li (2024) says should matter, measured on a real model (the
theory is in the docs, ``docs/theory.rst``, section "Robust generalization"):

* per-layer operator norms: spectral norms as sound **upper bounds** (:func:`art_jacreg.certify.layer_operator_norms`:
  exact SVD of the explicit operator matrix when it is small, a circular-convolution or Schur bound otherwise;
  convolutions as operators, not kernels), exact Frobenius norms and ``(2,1)`` norms of the transposes;
* the per-sample logit margins that the margin bound (:mod:`art_jacreg.generalization.bounds`) needs;
* the mean Jacobian norms :math:`\|J\|_F` and :math:`\|J\|_{1,1}` on training and test data (exact, ``K`` products);
* the empirical standard and robust generalization gaps (robust: under an attack at a given ``eps``).

:func:`generalization_report` measures all of them and assembles a
:class:`~art_jacreg.generalization.report.GeneralizationReport`.

| Paper link: https://arxiv.org/abs/2412.12449 (Wu and Li 2024)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from art_jacreg import _art, _validate
from art_jacreg.generalization.bounds import LayerNorms
from art_jacreg.generalization.report import Gap, GeneralizationReport

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier

__all__ = ["layer_norms", "margins", "mean_jacobian_norms", "empirical_gap", "generalization_report"]


def layer_norms(classifier: PyTorchClassifier) -> list[LayerNorms]:
    """Spectral (upper bound), Frobenius and ``(2,1)`` norms of every linear layer, preprocessing included.

    The spectral norms come from :func:`art_jacreg.certify.layer_operator_norms` (sound upper bounds, never power
    iteration). Frobenius and ``||A^T||_{2,1}`` are exact: the squared row norms of the operator are ``(A∘A) 1``.

    :param classifier: An ART ``PyTorchClassifier`` whose model the certifiers support.
    :return: One :class:`~art_jacreg.generalization.bounds.LayerNorms` per Linear, Conv2d or element-wise affine
        operation, in order.
    :raises UnsupportedOperationError: If the model cannot be traced into supported operations.
    """
    import torch

    from art_jacreg.certify import layer_operator_norms
    from art_jacreg.certify.ops import Affine, Conv2d, Linear

    net = _art.network_of(classifier)
    spectral = layer_operator_norms(net, norm=2)
    out = []
    for i, (op, s) in enumerate(zip(net.ops, spectral)):
        if not isinstance(op, (Affine, Conv2d, Linear)):
            continue
        ones = torch.ones((1, *op.in_shape), dtype=torch.float64)
        row_sq = op.sq_lin(ones)[0].reshape(-1).clamp(min=0.0)
        shape = (math.prod(op.out_shape), math.prod(op.in_shape))
        out.append(
            LayerNorms(i, type(op).__name__, shape, float(s), float(row_sq.sum().sqrt()), float(row_sq.sqrt().sum()))
        )
    return out


def margins(classifier: PyTorchClassifier, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Per-sample logit margins ``f_y(x) - max_{j != y} f_j(x)`` (negative when misclassified).

    :param classifier: An ART ``PyTorchClassifier``.
    :param x: Inputs ``(N, *input_shape)`` in raw units.
    :param y: Labels, indices ``(N,)`` or exact one-hot ``(N, nb_classes)`` (soft labels are refused).
    :param batch_size: Samples per forward pass.
    :return: float64 array ``(N,)``.
    """
    import torch

    x = _art.validate_x(x, classifier)
    labels = _validate.validate_labels(y, x.shape[0], classifier.nb_classes)
    func = _art.logits_function(classifier)
    out = []
    with torch.no_grad(), _art.model_mode(classifier.model, False):
        for start in range(0, x.shape[0], batch_size):
            logits = func(torch.as_tensor(x[start : start + batch_size], device=classifier.device)).double()
            lab = torch.as_tensor(labels[start : start + batch_size], device=logits.device)
            true = logits.gather(1, lab[:, None])[:, 0]
            others = logits.scatter(1, lab[:, None], float("-inf")).max(dim=1).values
            out.append((true - others).cpu().numpy())
    return np.concatenate(out)


def mean_jacobian_norms(classifier: PyTorchClassifier, x: np.ndarray, batch_size: int = 100) -> dict[str, float]:
    r"""Mean exact Jacobian norms of the logits w.r.t. the raw input: :math:`\|J\|_F` and :math:`\|J\|_{1,1}`.

    :param classifier: An ART ``PyTorchClassifier`` (preprocessing inside the differentiated function).
    :param x: Inputs ``(N, *input_shape)`` in raw units (not modified).
    :param batch_size: Samples per batch.
    :return: ``{"frobenius": mean ||J||_F, "l11": mean ||J||_{1,1}, "n": N}``.
    """
    import torch

    from art_jacreg.norms import frobenius_norm_sq, l11_norm

    x = _art.validate_x(x, classifier)
    batch_size = _validate.validate_positive_int(batch_size, "batch_size")
    func = _art.logits_function(classifier)
    fro, l11 = [], []
    with _art.model_mode(classifier.model, False):
        for start in range(0, x.shape[0], batch_size):
            xb = torch.as_tensor(x[start : start + batch_size], device=classifier.device)
            fro.append(frobenius_norm_sq(func, xb, n_projections=None).detach().clamp(min=0).sqrt().cpu().numpy())
            l11.append(l11_norm(func, xb, n_rows=None).detach().cpu().numpy())
    return {"frobenius": float(np.concatenate(fro).mean()), "l11": float(np.concatenate(l11).mean()), "n": len(x)}


def empirical_gap(
    classifier: PyTorchClassifier,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    eps: float = 0.0,
    norm: Any = 2,
    attack: str = "autoattack",
    attack_params: dict[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> Gap:
    """Train and test loss/accuracy, clean (``eps=0``) or under attack (robust gap).

    The robust loss is the highest cross-entropy the attack found in the ball (a lower bound on the true robust
    loss) and the robust accuracy the fraction of samples where no misclassified point was found (an upper bound).

    :param classifier: An ART ``PyTorchClassifier``.
    :param x_train: Training inputs (raw units).
    :param y_train: Training labels, indices or exact one-hot.
    :param x_test: Test inputs.
    :param y_test: Test labels, indices or exact one-hot.
    :param eps: Attack radius in raw units; ``0`` gives the standard gap.
    :param norm: ``2`` or ``np.inf``.
    :param attack: An attack of :mod:`art_jacreg.attacks` (default ART AutoAttack with APGD-CE and APGD-DLR).
    :param attack_params: Overrides of the attack's parameters, e.g. ``{"max_iter": 20}``.
    :param seed: Seed of the attack's random starts.
    :param batch_size: Samples per attack call.
    :return: :class:`~art_jacreg.generalization.report.Gap`.
    """
    from art_jacreg.attacks import evaluate, run_attack

    eps = _validate.validate_eps(eps)
    norm_value = _validate.validate_norm(norm)
    values = []
    for x, y, name in ((x_train, y_train, "x_train"), (x_test, y_test, "x_test")):
        x = _art.validate_x(x, classifier, name=name)
        labels = _validate.validate_labels(y, x.shape[0], classifier.nb_classes, name="y" + name[1:])
        # The attacks accumulate parameter gradients and switch modes: leave the model as found.
        with _art.preserved_model_state(classifier.model):
            if eps == 0:
                loss, pred = evaluate(classifier, x, labels)
                values.append((float(loss.mean()), float((pred == labels).mean())))
            else:
                res = run_attack(classifier, x, labels, eps, norm_value, attack, batch_size, attack_params, seed)
                values.append((float(res.loss.mean()), float(1.0 - res.success.mean())))
    key = None if eps == 0 else _validate.norm_key(norm_value)
    return Gap(values[0][0], values[1][0], values[0][1], values[1][1], eps=eps, norm=key)


def generalization_report(
    classifier: PyTorchClassifier,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    eps: dict[str, float] | None = None,
    attack: str = "autoattack",
    attack_params: dict[str, Any] | None = None,
    margin_quantile: float = 0.1,
    seed: int = 0,
) -> GeneralizationReport:
    """Measure everything of :class:`~art_jacreg.generalization.report.GeneralizationReport` for one classifier.

    :param classifier: An ART ``PyTorchClassifier`` whose model the certifiers support.
    :param x_train: Training inputs (raw units); pass a subset to keep the attack affordable.
    :param y_train: Training labels, indices or exact one-hot.
    :param x_test: Test inputs.
    :param y_test: Test labels, indices or exact one-hot.
    :param eps: Attack radius per norm for the robust gaps, e.g. ``{"2": 1.0, "inf": 0.1}``; ``None`` skips them.
    :param attack: Attack for the robust gaps (see :mod:`art_jacreg.attacks`).
    :param attack_params: Attack parameter overrides, e.g. ``{"max_iter": 20}``.
    :param margin_quantile: Quantile of the positive training margins used as the margin ``gamma``.
    :param seed: Seed of the attacks.
    :return: The report.
    """
    x_train = _art.validate_x(x_train, classifier, name="x_train")
    x_test = _art.validate_x(x_test, classifier, name="x_test")
    robust = {}
    for key, value in (eps or {}).items():
        norm = _validate.validate_norm(key, name="eps key")
        robust[_validate.norm_key(norm)] = empirical_gap(
            classifier,
            x_train,
            y_train,
            x_test,
            y_test,
            _validate.validate_eps(value, allow_zero=False),
            norm,
            attack,
            attack_params,
            seed,
        )
    return GeneralizationReport.build(
        layers=layer_norms(classifier),
        train_margins=margins(classifier, x_train, y_train),
        data_norm=float(np.linalg.norm(x_train.reshape(-1).astype(np.float64))),
        jacobian_train=mean_jacobian_norms(classifier, x_train),
        jacobian_test=mean_jacobian_norms(classifier, x_test),
        standard_gap=empirical_gap(classifier, x_train, y_train, x_test, y_test),
        robust_gaps=robust,
        margin_quantile=margin_quantile,
    )
