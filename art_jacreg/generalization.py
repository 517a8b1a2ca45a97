r"""Generalization measurements of a trained classifier (THEORY.md section 3): norms, a complexity term, gaps.

Everything the robust-generalization theory of Wu and Li (2024) says should matter, measured on a real model:

* per-layer operator norms: spectral norms as sound **upper bounds** (:func:`art_jacreg.certify.layer_operator_norms`:
  exact SVD of the explicit operator matrix when it is small, a circular-convolution or Schur bound otherwise;
  convolutions as operators, not kernels), exact Frobenius norms and ``(2,1)`` norms of the transposes, and the
  products over layers;
* one named norm-based complexity term, the spectrally-normalised margin bound of Bartlett, Foster and Telgarsky
  (2017), see :func:`spectral_complexity` and :func:`margin_bound_term`;
* the mean Jacobian norms :math:`\|J\|_F` and :math:`\|J\|_{1,1}` on training and test data (exact, ``K`` products);
* the empirical standard and robust generalization gaps (robust: under an attack at a given ``eps``).

Where the numeric bound is *vacuous* (larger than the range of the loss it bounds) the report says so in words.

| Paper link: https://arxiv.org/abs/2412.12449 (Wu and Li 2024)
| Paper link: https://arxiv.org/abs/1706.08498 (Bartlett, Foster and Telgarsky 2017)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from art_jacreg import _art, _validate

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier

__all__ = [
    "LayerNorms",
    "Gap",
    "GeneralizationReport",
    "layer_norms",
    "spectral_complexity",
    "margin_bound_term",
    "margins",
    "mean_jacobian_norms",
    "empirical_gap",
    "generalization_report",
]

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


@dataclass
class Gap:
    """Train and test loss and accuracy, and the generalization gaps.

    Both gaps are oriented so that a *positive* value means the model does worse on test data:
    ``loss_gap = loss_test - loss_train`` and ``accuracy_gap = accuracy_train - accuracy_test``.

    :ivar loss_train: Mean cross-entropy on the training sample.
    :ivar loss_test: Mean cross-entropy on the test sample.
    :ivar accuracy_train: Accuracy on the training sample.
    :ivar accuracy_test: Accuracy on the test sample.
    :ivar eps: Attack radius (``0`` for the standard gap).
    :ivar norm: ``"2"``, ``"inf"`` or ``None`` for the standard gap.
    """

    loss_train: float
    loss_test: float
    accuracy_train: float
    accuracy_test: float
    eps: float = 0.0
    norm: str | None = None

    @property
    def loss_gap(self) -> float:
        """``loss_test - loss_train``."""
        return self.loss_test - self.loss_train

    @property
    def accuracy_gap(self) -> float:
        """``accuracy_train - accuracy_test``."""
        return self.accuracy_train - self.accuracy_test

    def to_dict(self) -> dict[str, Any]:
        """Plain dict including the two gaps.

        :return: JSON-serialisable dict.
        """
        return {**asdict(self), "loss_gap": self.loss_gap, "accuracy_gap": self.accuracy_gap}


def layer_norms(classifier: PyTorchClassifier) -> list[LayerNorms]:
    """Spectral (upper bound), Frobenius and ``(2,1)`` norms of every linear layer, preprocessing included.

    The spectral norms come from :func:`art_jacreg.certify.layer_operator_norms` (sound upper bounds, never power
    iteration). Frobenius and ``||A^T||_{2,1}`` are exact: the squared row norms of the operator are ``(A∘A) 1``.

    :param classifier: An ART ``PyTorchClassifier`` whose model the certifiers support.
    :return: One :class:`LayerNorms` per Linear, Conv2d or element-wise affine operation, in order.
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


def spectral_complexity(layers: list[LayerNorms]) -> float:
    r"""Spectral complexity of Bartlett, Foster and Telgarsky (2017), with reference matrices ``M_i = 0``.

    .. math::

        R_A = \Big(\prod_i \|A_i\|_2\Big)
              \Big(\sum_i \frac{\|A_i^\top - M_i^\top\|_{2,1}^{2/3}}{\|A_i\|_2^{2/3}}\Big)^{3/2}
        \quad\text{with } M_i = 0,

    for 1-Lipschitz activations (ReLU). Written as :math:`(\sum_i b_i^{2/3}\prod_{j\ne i}s_j^{2/3})^{3/2}` it is
    increasing in every spectral norm :math:`s_j`, so evaluating it at upper bounds of the :math:`s_j` (what
    :func:`layer_norms` returns) gives an upper bound of the true :math:`R_A`.

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
    :return: :class:`Gap`.
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


@dataclass
class GeneralizationReport:
    """The measurable terms of the generalization theory for one model, with an honest vacuity flag.

    :ivar layers: Per-layer norms (:func:`layer_norms`).
    :ivar spectral_product: ``prod_i ||A_i||_2`` (upper bound; also an upper bound on the l2 Lipschitz constant).
    :ivar frobenius_product: ``prod_i ||A_i||_F``.
    :ivar spectral_complexity: ``R_A`` of Bartlett, Foster and Telgarsky (2017) with ``M_i = 0``.
    :ivar margin: ``gamma``, the ``margin_quantile`` quantile of the *positive* training margins (correctly
        classified points), so it is positive whenever one training point is classified correctly.
    :ivar margin_quantile: Quantile used for ``gamma``.
    :ivar margin_violations: Fraction of training points with margin ``< gamma`` (the empirical margin loss of the
        bound, at most the training error plus ``margin_quantile``).
    :ivar data_norm: ``||X||_F`` of the training inputs used.
    :ivar n_train: Number of training inputs used.
    :ivar margin_bound: ``R_A ||X||_F / (gamma n)`` (:func:`margin_bound_term`), ``nan`` if ``gamma <= 0``.
    :ivar vacuous: True when ``margin_violations + margin_bound`` exceeds :data:`LOSS_RANGE` or cannot be evaluated.
    :ivar jacobian_train: Mean Jacobian norms on the training inputs (:func:`mean_jacobian_norms`).
    :ivar jacobian_test: Mean Jacobian norms on the test inputs.
    :ivar standard_gap: Clean :class:`Gap`.
    :ivar robust_gaps: Robust :class:`Gap` per norm key (``"2"``, ``"inf"``), possibly empty.
    :ivar notes: Plain-language remarks (vacuity, units).
    """

    layers: list[LayerNorms]
    spectral_product: float
    frobenius_product: float
    spectral_complexity: float
    margin: float
    margin_quantile: float
    margin_violations: float
    data_norm: float
    n_train: int
    margin_bound: float
    vacuous: bool
    jacobian_train: dict[str, float]
    jacobian_test: dict[str, float]
    standard_gap: Gap
    robust_gaps: dict[str, Gap] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        layers: list[LayerNorms],
        train_margins: np.ndarray,
        data_norm: float,
        jacobian_train: dict[str, float],
        jacobian_test: dict[str, float],
        standard_gap: Gap,
        robust_gaps: dict[str, Gap] | None = None,
        margin_quantile: float = 0.1,
    ) -> GeneralizationReport:
        """Assemble a report from measured parts (products, ``R_A``, the margin term and the vacuity flag derived).

        :param layers: :func:`layer_norms` output.
        :param train_margins: :func:`margins` on the training inputs.
        :param data_norm: ``||X||_F`` of those inputs.
        :param jacobian_train: :func:`mean_jacobian_norms` on training inputs.
        :param jacobian_test: :func:`mean_jacobian_norms` on test inputs.
        :param standard_gap: Clean gap.
        :param robust_gaps: Robust gaps per norm key.
        :param margin_quantile: Quantile of the positive training margins used as ``gamma``, in ``(0, 1)``.
        :return: The report.
        """
        if not 0 < margin_quantile < 1:
            raise ValueError(f"`margin_quantile` must be in (0, 1), got {margin_quantile!r}.")
        train_margins = np.asarray(train_margins, dtype=np.float64)
        n = int(len(train_margins))
        positive = train_margins[train_margins > 0]
        gamma = float(np.quantile(positive, margin_quantile)) if positive.size else float("nan")
        violations = float(np.mean(train_margins < gamma)) if positive.size else 1.0
        r_a = spectral_complexity(layers)
        term = margin_bound_term(r_a, data_norm, gamma, n)
        total = violations + term
        vacuous = not (total <= LOSS_RANGE)
        notes = []
        if not positive.size:
            notes.append(
                "No training point is classified correctly, so no positive margin exists and the margin "
                "bound cannot be evaluated: it is vacuous."
            )
        elif vacuous:
            notes.append(
                f"VACUOUS: the margin bound, empirical margin loss {violations:.3g} + complexity term R_A ||X||_F / "
                f"(gamma n) = {term:.3g}, exceeds {LOSS_RANGE:g}, the range of the 0-1 error it bounds (and it omits "
                "log factors and constants that only make it larger). It says nothing about this model's test error; "
                "only its relative size across models is informative."
            )
        else:
            notes.append(
                f"The margin bound {violations:.3g} + {term:.3g} is <= {LOSS_RANGE:g} (non-vacuous before log factors)."
            )
        notes.append(
            "Spectral norms are sound upper bounds (art_jacreg.certify.layer_operator_norms), so R_A and the products "
            "are upper bounds too; eps and x are in raw input units."
        )
        return cls(
            layers=list(layers),
            spectral_product=float(np.prod([layer.spectral for layer in layers])),
            frobenius_product=float(np.prod([layer.frobenius for layer in layers])),
            spectral_complexity=r_a,
            margin=gamma,
            margin_quantile=margin_quantile,
            margin_violations=violations,
            data_norm=float(data_norm),
            n_train=n,
            margin_bound=term,
            vacuous=vacuous,
            jacobian_train=dict(jacobian_train),
            jacobian_test=dict(jacobian_test),
            standard_gap=standard_gap,
            robust_gaps=dict(robust_gaps or {}),
            notes=notes,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``nan`` kept as float ``nan``).

        :return: The dict.
        """
        out = {k: v for k, v in self.__dict__.items() if k not in ("layers", "standard_gap", "robust_gaps")}
        out["layers"] = [asdict(layer) for layer in self.layers]
        out["standard_gap"] = self.standard_gap.to_dict()
        out["robust_gaps"] = {k: g.to_dict() for k, g in self.robust_gaps.items()}
        return out

    def to_markdown(self) -> str:
        """A human-readable markdown report; a vacuous bound is said to be vacuous, in words.

        :return: Markdown text.
        """
        lines = ["## Generalization report", "", "### Layer norms", ""]
        lines += ["| layer | operator | shape | spectral (upper bound) | Frobenius | ‖Aᵀ‖₂,₁ |", "|---|" * 6]
        for layer in self.layers:
            lines.append(
                f"| {layer.index} | {layer.kind} | {layer.shape[0]}×{layer.shape[1]} | {layer.spectral:.4g} | "
                f"{layer.frobenius:.4g} | {layer.l21_transpose:.4g} |"
            )
        lines.append(f"| **product** | | | {self.spectral_product:.4g} | {self.frobenius_product:.4g} | |")
        verdict = "**VACUOUS**" if self.vacuous else "non-vacuous"
        lines += [
            "",
            "### Norm-based complexity (Bartlett, Foster and Telgarsky 2017)",
            "",
            "R_A = (prod_i ||A_i||_2) * (sum_i ||A_i^T||_{2,1}^{2/3} / ||A_i||_2^{2/3})^{3/2} (M_i = 0); "
            "term = R_A ||X||_F / (gamma n), log factors and constants omitted.",
            "",
            f"- spectral complexity R_A: {self.spectral_complexity:.4g}",
            f"- margin gamma ({self.margin_quantile:.0%} quantile of the positive training margins): "
            f"{self.margin:.4g}; training points below it: {self.margin_violations:.3f}",
            f"- ||X||_F: {self.data_norm:.4g}, n = {self.n_train}",
            f"- margin-bound term: {self.margin_bound:.4g}; bound on the test error = {self.margin_violations:.3f} + "
            f"{self.margin_bound:.4g} ({verdict}: the error lies in [0, {LOSS_RANGE:g}])",
            "",
            "### Mean Jacobian norms (logits w.r.t. raw input)",
            "",
            "| data | ‖J‖_F | ‖J‖₁,₁ |",
            "|---|---|---|",
            f"| train | {self.jacobian_train['frobenius']:.4g} | {self.jacobian_train['l11']:.4g} |",
            f"| test | {self.jacobian_test['frobenius']:.4g} | {self.jacobian_test['l11']:.4g} |",
            "",
            "### Empirical generalization gaps (loss gap = test - train, accuracy gap = train - test)",
            "",
            "| gap | loss train | loss test | loss gap | acc train | acc test | acc gap |",
            "|---|---|---|---|---|---|---|",
        ]
        gaps = [("standard", self.standard_gap)]
        gaps += [(f"robust {_validate.norm_label(k)} eps {g.eps:g}", g) for k, g in self.robust_gaps.items()]
        for name, g in gaps:
            lines.append(
                f"| {name} | {g.loss_train:.4f} | {g.loss_test:.4f} | {g.loss_gap:+.4f} | {g.accuracy_train:.4f} | "
                f"{g.accuracy_test:.4f} | {g.accuracy_gap:+.4f} |"
            )
        lines += ["", *[f"- {note}" for note in self.notes], ""]
        return "\n".join(lines)


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
    """Measure everything of :class:`GeneralizationReport` for one classifier.

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
