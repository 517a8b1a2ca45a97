"""The comparison protocol: budgets, eps sweeps and presets, and the evaluation every trained model goes through.

Every defence gets the same data, model (``mnist_cnn``), seed, optimizer (Adam) and epoch budget; every trained model
is then evaluated by :func:`evaluate_model` in the same way:

* clean accuracy and loss on the test set;
* robust accuracy under ART's ``AutoAttack`` with the fast preset APGD-CE + APGD-DLR (via
  :func:`art_jacreg.attacks.run_attack`) at every eps of the l2 and l-inf sweeps;
* certified accuracy (the prediction is correct and certified on the whole ball) from
  :meth:`art_jacreg.reporter.JacobianBoundReporter.certify` at small eps, and the median certified radius;
* mean Jacobian norms on training and test points, layer norms and the margin-bound term
  (:mod:`art_jacreg.generalization`);
* the standard and robust generalization gaps (robust: AutoAttack at the reference eps of each norm).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["Protocol", "PRESETS", "get_preset", "evaluate_model"]


@dataclass(frozen=True)
class Protocol:
    """Budgets and sweeps of one comparison run (identical for every defence).

    :ivar name: Preset name.
    :ivar defences: Names of the defences to run (see :func:`art_jacreg.compare.list_defences`).
    :ivar n_train: Training points (``None``: all of the training set).
    :ivar n_test: Test points for clean accuracy and the standard gap (``None``: all).
    :ivar n_attack: Test points attacked at every eps (and training points attacked for the robust gap).
    :ivar n_certify: Test points certified.
    :ivar n_jacobian: Points (train and test each) for the mean Jacobian norms.
    :ivar epochs: Epoch budget of every defence.
    :ivar batch_size: Mini-batch size.
    :ivar lr: Adam learning rate.
    :ivar seed: Seed of the initial weights, the training randomness, the data subsets and the attacks.
    :ivar eps_l2: l2 eps sweep for AutoAttack.
    :ivar eps_linf: l-inf eps sweep for AutoAttack.
    :ivar cert_eps_l2: l2 eps for certified accuracy.
    :ivar cert_eps_linf: l-inf eps for certified accuracy.
    :ivar train_eps_l2: eps l2-trained defences train against.
    :ivar train_eps_linf: eps l-inf-trained defences train against.
    :ivar ref_eps_l2: l2 eps of the robust generalization gap (must be in ``eps_l2``).
    :ivar ref_eps_linf: l-inf eps of the robust generalization gap (must be in ``eps_linf``).
    :ivar attack_iter: APGD iterations per attack (each of APGD-CE and APGD-DLR).
    :ivar certify_method: Certification method of the reporter.
    :ivar data_path: MNIST location for :func:`art_jacreg.data.load_mnist` (``None``: ART cache or embedded subset).
    """

    name: str = "custom"
    defences: tuple[str, ...] = ("plain", "madry", "jr-l2-0.01", "jr-linf-0.001")
    n_train: int | None = None
    n_test: int | None = None
    n_attack: int = 200
    n_certify: int = 200
    n_jacobian: int = 200
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    eps_l2: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    eps_linf: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3)
    cert_eps_l2: tuple[float, ...] = (0.1, 0.3)
    cert_eps_linf: tuple[float, ...] = (0.01, 0.02)
    train_eps_l2: float = 1.0
    train_eps_linf: float = 0.1
    ref_eps_l2: float = 1.0
    ref_eps_linf: float = 0.1
    attack_iter: int = 20
    certify_method: str = "interval"
    data_path: str | None = None

    def __post_init__(self) -> None:
        """Validate the fields (raising ``ValueError`` naming the field)."""
        from art_jacreg import _art

        for name in ("n_attack", "n_certify", "n_jacobian", "epochs", "batch_size", "attack_iter"):
            _art.validate_positive_int(getattr(self, name), name)
        for name in ("n_train", "n_test"):
            if getattr(self, name) is not None:
                _art.validate_positive_int(getattr(self, name), name)
        for name in ("eps_l2", "eps_linf", "cert_eps_l2", "cert_eps_linf"):
            values = tuple(getattr(self, name))
            if not values:
                raise ValueError(f"`{name}` must hold at least one eps.")
            for value in values:
                _art.validate_eps(value, name=name, allow_zero=False)
            object.__setattr__(self, name, tuple(float(v) for v in values))
        for name in ("train_eps_l2", "train_eps_linf", "ref_eps_l2", "ref_eps_linf"):
            _art.validate_eps(getattr(self, name), name=name, allow_zero=False)
        if self.ref_eps_l2 not in self.eps_l2 or self.ref_eps_linf not in self.eps_linf:
            raise ValueError("`ref_eps_l2` / `ref_eps_linf` must be members of `eps_l2` / `eps_linf`.")
        if not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr!r}.")
        object.__setattr__(self, "defences", tuple(self.defences))

    def replace(self, **changes: Any) -> Protocol:
        """A copy with some fields changed (validated again).

        :param changes: Field values.
        :return: The new protocol.
        """
        return dataclasses.replace(self, **changes)

    def train_eps(self) -> dict[str, float]:
        """Training eps per norm key.

        :return: ``{"2": train_eps_l2, "inf": train_eps_linf}``.
        """
        return {"2": self.train_eps_l2, "inf": self.train_eps_linf}

    def evaluation_config(self) -> dict[str, Any]:
        """The fields that determine a defence's result (everything but the preset name and the defence list).

        :return: JSON-serialisable dict used in the cache key.
        """
        out = dataclasses.asdict(self)
        del out["name"], out["defences"]
        return out


PRESETS: dict[str, Protocol] = {
    # Quick: the embedded MNIST (4,000 / 1,000), 7 defences (4 of ART's trainers, plain, JR l2 and l-inf), 3 epochs
    # at batch 64, AutoAttack with 10-step APGD-CE/DLR on 150 test digits, certificates on 60. Measured 4 min 55 s
    # wall (2 min 43 s CPU) on 2 cores shared with other jobs (load 3.5-4), one torch thread.
    "quick": Protocol(
        name="quick",
        defences=("plain", "fgsm", "madry", "trades", "fbf", "jr-l2-0.01", "jr-linf-0.001"),
        n_attack=150,
        n_certify=60,
        n_jacobian=150,
        epochs=3,
        batch_size=64,
        attack_iter=10,
    ),
    # Full: every registered defence (14), 10 epochs at batch 64, 20-step APGD-CE/DLR on 500 test digits,
    # certificates on 200. Estimated from the quick run's per-epoch and per-point costs: ~17 min training + ~24 min
    # evaluation, i.e. about 40 minutes on 2 shared cores on the embedded subset (training time grows ~15x with full
    # MNIST; cap it with n_train / --n-train).
    "full": Protocol(
        name="full",
        defences=(
            "plain",
            "fgsm",
            "madry",
            "pgd-l2",
            "trades",
            "fbf",
            "awp",
            "ibp",
            "jr-l2-0.001",
            "jr-l2-0.01",
            "jr-l2-0.1",
            "jr-linf-0.0003",
            "jr-linf-0.001",
            "jr-linf-0.003",
        ),
        n_attack=500,
        n_certify=200,
        n_jacobian=500,
        epochs=10,
        batch_size=64,
        attack_iter=20,
    ),
}


def get_preset(name: str) -> Protocol:
    """A preset protocol by name.

    :param name: ``"quick"`` or ``"full"``.
    :return: The protocol.
    :raises ValueError: For an unknown name.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}.")
    return PRESETS[name]


@dataclass
class EvalData:
    """The fixed data subsets every model is evaluated on.

    :ivar x_train: Training inputs actually trained on.
    :ivar y_train: Their one-hot labels.
    :ivar x_test: Test inputs for clean accuracy.
    :ivar y_test: Their one-hot labels.
    :ivar source: Where the data came from.
    :ivar idx_train_eval: Indices (into ``x_train``) of the training points attacked / used for Jacobian norms.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str = ""
    idx_train_eval: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def load_data(protocol: Protocol) -> EvalData:
    """Load MNIST and take the protocol's subsets (a seeded, class-balanced-by-chance random subset).

    :param protocol: The protocol.
    :return: :class:`EvalData`.
    """
    from art_jacreg.data import load_mnist

    (x_train, y_train), (x_test, y_test), _, _ = load_mnist(protocol.data_path, seed=protocol.seed)
    rng = np.random.default_rng(protocol.seed)
    if protocol.n_train is not None and protocol.n_train < len(x_train):
        keep = np.sort(rng.choice(len(x_train), protocol.n_train, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
    if protocol.n_test is not None and protocol.n_test < len(x_test):
        keep = np.sort(rng.choice(len(x_test), protocol.n_test, replace=False))
        x_test, y_test = x_test[keep], y_test[keep]
    n_eval = min(len(x_train), max(protocol.n_attack, protocol.n_jacobian))
    idx = np.sort(rng.choice(len(x_train), n_eval, replace=False))
    source = protocol.data_path or f"{len(x_train) + len(x_test)} MNIST digits (ART cache or embedded subset)"
    return EvalData(x_train, y_train, x_test, y_test, source, idx)


def _accuracy_under_attack(clf: Any, x: np.ndarray, y: np.ndarray, eps: float, norm: float, p: Protocol) -> Any:
    from art_jacreg.attacks import run_attack

    return run_attack(clf, x, y, eps, norm, "autoattack", 256, {"max_iter": p.attack_iter}, seed=p.seed)


def evaluate_model(model: Any, data: EvalData, protocol: Protocol, verbose: bool = False) -> dict[str, Any]:
    """Evaluate one trained model with the protocol (see the module docstring).

    :param model: A trained ``mnist_cnn``-architecture model.
    :param data: The data subsets (:func:`load_data`).
    :param protocol: The protocol.
    :param verbose: Progress bars of the certifier.
    :return: A JSON-serialisable dict of metrics.
    """
    from art_jacreg import generalization as gen
    from art_jacreg.attacks import evaluate
    from art_jacreg.models import make_classifier
    from art_jacreg.reporter import JacobianBoundReporter

    start = time.perf_counter()
    clf = make_classifier(model)
    y_test = data.y_test.argmax(1)
    y_train = data.y_train.argmax(1)
    loss_test, pred_test = evaluate(clf, data.x_test, y_test)
    loss_train, pred_train = evaluate(clf, data.x_train, y_train)
    standard = gen.Gap(
        float(loss_train.mean()),
        float(loss_test.mean()),
        float((pred_train == y_train).mean()),
        float((pred_test == y_test).mean()),
    )
    n_att = min(protocol.n_attack, len(data.x_test))
    xa, ya = data.x_test[:n_att], y_test[:n_att]
    xtr, ytr = data.x_train[data.idx_train_eval[:n_att]], y_train[data.idx_train_eval[:n_att]]
    robust: dict[str, dict[str, float]] = {"2": {}, "inf": {}}
    robust_gaps = {}
    for key, norm, sweep, ref in (
        ("2", 2.0, protocol.eps_l2, protocol.ref_eps_l2),
        ("inf", np.inf, protocol.eps_linf, protocol.ref_eps_linf),
    ):
        for eps in sweep:
            res = _accuracy_under_attack(clf, xa, ya, eps, norm, protocol)
            robust[key][f"{eps:g}"] = float(1.0 - res.success.mean())
            if eps == ref:
                res_train = _accuracy_under_attack(clf, xtr, ytr, eps, norm, protocol)
                robust_gaps[key] = gen.Gap(
                    float(res_train.loss.mean()),
                    float(res.loss.mean()),
                    float(1.0 - res_train.success.mean()),
                    float(1.0 - res.success.mean()),
                    eps=eps,
                    norm=key,
                )
    attack_seconds = time.perf_counter() - start

    reporter = JacobianBoundReporter.from_classifier(clf, verbose=verbose)
    n_cert = min(protocol.n_certify, len(data.x_test))
    certified: dict[str, dict[str, float]] = {"2": {}, "inf": {}}
    median_radius = {}
    for key, norm, sweep in (("2", 2.0, protocol.cert_eps_l2), ("inf", np.inf, protocol.cert_eps_linf)):
        pred, radius = reporter.certify(data.x_test[:n_cert], norm=norm, method=protocol.certify_method)
        correct = pred == y_test[:n_cert]
        median_radius[key] = float(np.median(np.where(correct, radius, 0.0)))
        for eps in sweep:
            certified[key][f"{eps:g}"] = float(np.mean(correct & (radius >= eps)))
    n_jac = min(protocol.n_jacobian, len(data.x_test))
    x_jac_train = data.x_train[data.idx_train_eval[:n_jac]]
    report = gen.GeneralizationReport.build(
        layers=gen.layer_norms(clf),
        train_margins=gen.margins(clf, data.x_train, y_train),
        data_norm=float(np.linalg.norm(data.x_train.reshape(-1).astype(np.float64))),
        jacobian_train=gen.mean_jacobian_norms(clf, x_jac_train),
        jacobian_test=gen.mean_jacobian_norms(clf, data.x_test[:n_jac]),
        standard_gap=standard,
        robust_gaps=robust_gaps,
    )
    return {
        "clean_accuracy": standard.accuracy_test,
        "clean_loss": standard.loss_test,
        "robust_accuracy": robust,
        "certified_accuracy": certified,
        "median_certified_radius": median_radius,
        "jacobian": {"train": report.jacobian_train, "test": report.jacobian_test},
        "gaps": {"standard": standard.to_dict(), **{f"robust_{k}": g.to_dict() for k, g in robust_gaps.items()}},
        "generalization": report.to_dict(),
        "eval_seconds": time.perf_counter() - start,
        "attack_seconds": attack_seconds,
    }
