"""The end-to-end steps behind the ``art-jacreg`` commands, as library functions.

Each function takes arrays and settings and returns a result object with a ``to_text()`` method; the CLI only
parses arguments, calls these functions and prints what they return.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import torch
from art.estimators.classification import PyTorchClassifier

from art_jacreg._validate import norm_key, norm_label

__all__ = [
    "TrainingSummary",
    "CertificationSummary",
    "train_mnist_cnn",
    "accuracy",
    "certification_summary",
    "default_certify_eps",
    "default_report_eps",
    "generalization_markdown",
]


def _indices(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y.astype(np.int64)


def default_certify_eps(norm: float) -> list[float]:
    """Radii at which ``art-jacreg certify`` reports certified accuracy by default.

    :param norm: ``2`` or ``inf``.
    :return: ``[0.1, 0.3]`` for l2, ``[0.01, 0.02]`` for l-inf (pixel units of ``[0, 1]`` images).
    """
    return [0.1, 0.3] if norm == 2 else [0.01, 0.02]


def default_report_eps(norm: float) -> float:
    """Radius of ``art-jacreg report`` by default.

    :param norm: ``2`` or ``inf``.
    :return: ``1.0`` for l2, ``0.1`` for l-inf.
    """
    return 1.0 if norm == 2 else 0.1


def accuracy(classifier: PyTorchClassifier, x: np.ndarray, y: np.ndarray) -> float:
    """Clean accuracy of ``classifier`` on ``x``.

    :param classifier: The classifier.
    :param x: Inputs in raw units.
    :param y: Class indices ``(N,)`` or one-hot labels ``(N, K)``.
    :return: The fraction of correct predictions.
    """
    from art_jacreg.attacks import evaluate

    labels = _indices(y)
    _, pred = evaluate(classifier, x, labels)
    return float(np.mean(pred == labels))


@dataclasses.dataclass
class TrainingSummary:
    """What :func:`train_mnist_cnn` returns.

    :ivar model: The trained ``torch.nn.Module``.
    :ivar classifier: The classifier wrapping it.
    :ivar norm: Threat norm of the regulariser.
    :ivar reg_weight: Regularisation weight used (``0`` = plain training).
    :ivar epochs: Training epochs.
    :ivar n_train: Number of training digits.
    :ivar certified: ``None``, or the certified-training settings ``{"eps": ..., "bound": ...}``.
    """

    model: torch.nn.Module
    classifier: PyTorchClassifier
    norm: float
    reg_weight: float
    epochs: int
    n_train: int
    certified: dict[str, Any] | None = None

    def describe(self) -> str:
        """One line saying how the model was trained.

        :return: E.g. ``"mnist_cnn (JR norm=2 reg_weight=0.01, 3 epochs on 400 digits)"``.
        """
        if self.certified is not None:
            kind = f"certified norm={norm_key(self.norm)} eps={self.certified['eps']:g} bound={self.certified['bound']}"
            kind += f" reg_weight={self.reg_weight:g}" if self.reg_weight else ""
        elif self.reg_weight == 0:
            kind = "plain"
        else:
            kind = f"JR norm={norm_key(self.norm)} reg_weight={self.reg_weight:g}"
        return f"mnist_cnn ({kind}, {self.epochs} epochs on {self.n_train} digits)"


def train_mnist_cnn(
    x: np.ndarray,
    y: np.ndarray,
    norm: float = 2.0,
    reg_weight: float | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    verbose: bool = True,
    checkpoint: str | os.PathLike | None = None,
    certified: dict[str, Any] | None = None,
) -> TrainingSummary:
    """Train :func:`~art_jacreg.models.mnist_cnn` with :class:`~art_jacreg.trainer.JacobianRegularizedTrainer`.

    Data-parallel when a ``torch.distributed`` process group is initialised (``batch_size`` is then per rank).

    :param x: Training images ``(N, 1, 28, 28)`` in ``[0, 1]``.
    :param y: Labels (indices or one-hot).
    :param norm: Threat norm of the regulariser (``2`` or ``inf``).
    :param reg_weight: Regularisation weight (``None``: the trainer's default; ``0``: plain training).
    :param epochs: Training epochs.
    :param batch_size: Mini-batch size.
    :param lr: Adam learning rate.
    :param seed: Seed of the weights and of the training.
    :param verbose: Show progress bars.
    :param checkpoint: Optional checkpoint file: saved after every epoch, resumed from when it exists.
    :param certified: ``None`` for Jacobian regularization, or keywords of
        :class:`~art_jacreg.certified_trainer.CertifiedJacobianTrainer` (``eps``, ``bound``, ...) to train for
        certificates instead (``reg_weight`` ``None`` then means 0).
    :return: :class:`TrainingSummary`.
    :raises FloatingPointError: If training diverges (the trainer keeps the last finite weights).
    """
    from art_jacreg.models import make_classifier, mnist_cnn
    from art_jacreg.trainer import JacobianRegularizedTrainer

    model = mnist_cnn(seed=seed)
    classifier = make_classifier(model, lr=lr)
    if certified is None:
        trainer: Any = JacobianRegularizedTrainer(
            classifier, norm=norm, reg_weight=reg_weight, seed=seed, verbose=verbose
        )
    else:
        from art_jacreg.certified_trainer import CertifiedJacobianTrainer

        weight = 0.0 if reg_weight is None else reg_weight
        trainer = CertifiedJacobianTrainer(
            classifier, norm=norm, reg_weight=weight, seed=seed, verbose=verbose, **certified
        )
    trainer.fit(x, y, batch_size=batch_size, nb_epochs=epochs, checkpoint=checkpoint)
    return TrainingSummary(model, classifier, norm, float(trainer.reg_weight), epochs, len(x), certified)


@dataclasses.dataclass
class CertificationSummary:
    """What :func:`certification_summary` returns.

    :ivar n: Number of certified digits.
    :ivar norm: ``2`` or ``inf``.
    :ivar method: Certification method.
    :ivar clean_accuracy: Fraction classified correctly.
    :ivar median_radius: Median certified radius over all digits.
    :ivar median_radius_correct: Median certified radius counting misclassified digits as radius 0.
    :ivar certified_accuracy: Fraction correct and certified at each radius, by radius.
    """

    n: int
    norm: float
    method: str
    clean_accuracy: float
    median_radius: float
    median_radius_correct: float
    certified_accuracy: dict[float, float]

    def to_text(self) -> str:
        """The lines ``art-jacreg certify`` prints.

        :return: Plain text.
        """
        lines = [
            f"certified radii ({norm_label(self.norm, ascii_only=True)}, method {self.method})"
            f" on {self.n} test digits, "
            "pixel units of [0, 1]:",
            f"  clean accuracy:                      {self.clean_accuracy:.4f}",
            f"  median certified radius (all):       {self.median_radius:.4g}",
            f"  median certified radius (correct=0 otherwise): {self.median_radius_correct:.4g}",
        ]
        lines += [f"  certified accuracy at eps {eps:g}: {acc:.4f}" for eps, acc in self.certified_accuracy.items()]
        return "\n".join(lines)


def certification_summary(
    classifier: PyTorchClassifier,
    x: np.ndarray,
    y: np.ndarray,
    eps: list[float] | tuple[float, ...],
    norm: float = 2.0,
    method: str = "interval",
    batch_size: int = 128,
    verbose: bool = True,
    n_jobs: int = 1,
) -> CertificationSummary:
    """Certify ``x`` with :class:`~art_jacreg.reporter.JacobianBoundReporter` and summarise the radii.

    :param classifier: The classifier.
    :param x: Inputs in raw units.
    :param y: Labels (indices or one-hot).
    :param eps: Radii at which certified accuracy is computed.
    :param norm: ``2`` or ``inf``.
    :param method: Certification method (``"lipschitz"``, ``"interval"``, ``"linear"``).
    :param batch_size: Samples per batch.
    :param verbose: Show progress bars.
    :param n_jobs: Processes certifying in parallel (see :meth:`~art_jacreg.reporter.JacobianBoundReporter.certify`).
    :return: :class:`CertificationSummary`.
    """
    from art_jacreg.reporter import JacobianBoundReporter

    labels = _indices(y)
    reporter = JacobianBoundReporter.from_classifier(classifier, verbose=verbose)
    pred, radius = reporter.certify(x, norm=norm, method=method, batch_size=batch_size, n_jobs=n_jobs)
    correct = pred == labels
    return CertificationSummary(
        n=len(x),
        norm=norm,
        method=method,
        clean_accuracy=float(correct.mean()),
        median_radius=float(np.median(radius)),
        median_radius_correct=float(np.median(np.where(correct, radius, 0.0))),
        certified_accuracy={float(e): float(np.mean(correct & (radius >= e))) for e in eps},
    )


def generalization_markdown(
    classifier: PyTorchClassifier,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    eps: float,
    norm: float = 2.0,
    attack_params: dict[str, Any] | None = None,
) -> str:
    """The generalization report (layer norms, margin bound, Jacobian norms, gaps under AutoAttack) as markdown.

    :param classifier: The classifier.
    :param x_train: Training inputs.
    :param y_train: Training labels.
    :param x_test: Test inputs.
    :param y_test: Test labels.
    :param eps: Radius of the robust gaps.
    :param norm: ``2`` or ``inf``.
    :param attack_params: AutoAttack parameters (default ``{"max_iter": 20}``).
    :return: Markdown text.
    """
    from art_jacreg.generalization import generalization_report

    report = generalization_report(
        classifier,
        x_train,
        y_train,
        x_test,
        y_test,
        eps={"2" if norm == 2 else "inf": eps},
        attack="autoattack",
        attack_params=attack_params if attack_params is not None else {"max_iter": 20},
    )
    return report.to_markdown()
