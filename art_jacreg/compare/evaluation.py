"""The evaluation every trained model goes through, identically:

* clean accuracy and loss on the test set;
* robust accuracy under ART's ``AutoAttack`` with the fast pair APGD-CE + APGD-DLR (``attack_iter`` iterations each,
  via :func:`art_jacreg.attacks.run_attack`) at every eps of the l2 and l-inf sweeps, random starts seeded by the
  training seed;
* optionally, AutoAttack's standard version at the headline eps of each norm
  (:mod:`art_jacreg.compare.standard_attack`) on the points the fast pair left;
* certified accuracy (correct and certified on the whole ball) from
  :meth:`art_jacreg.reporter.JacobianBoundReporter.certify`, and the median certified radius;
* mean Jacobian norms on training and test points, layer norms and the margin-bound term
  (:mod:`art_jacreg.generalization`);
* the standard and robust generalization gaps (robust: the fast pair at the reference eps of each norm).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from art_jacreg.compare.protocol import Protocol

__all__ = ["EvalData", "load_data", "evaluate_model"]


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
    """Load MNIST and take the protocol's subsets (a random subset drawn with ``protocol.seed``).

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


def _fast_pair(clf: Any, x: np.ndarray, y: np.ndarray, eps: float, norm: float, p: Protocol, seed: int) -> Any:
    from art_jacreg.attacks import run_attack

    return run_attack(clf, x, y, eps, norm, "autoattack", 256, {"max_iter": p.attack_iter}, seed=seed)


def _standard(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    fast_robust: np.ndarray,
    eps: float,
    norm: float,
    protocol: Protocol,
    seed: int,
) -> dict[str, Any]:
    from art_jacreg.compare.standard_attack import standard_autoattack

    n = min(protocol.n_standard, len(fast_robust))
    start = time.perf_counter()
    keep = np.flatnonzero(fast_robust[:n])
    out = standard_autoattack(model, x[keep], y[keep], eps, norm, protocol.square_queries, seed)
    robust = fast_robust[:n].copy()
    robust[keep] = out["robust"]
    return {
        "eps": eps,
        "n": n,
        "fast": float(fast_robust[:n].mean()),
        "standard": float(robust.mean()),
        "extra_broken": int(fast_robust[:n].sum() - robust.sum()),
        "broken_by": out["broken_by"],
        "attack_seconds": out["seconds"],
        "seconds": time.perf_counter() - start,
        "square_queries": protocol.square_queries,
    }


def evaluate_model(
    model: Any, data: EvalData, protocol: Protocol, verbose: bool = False, seed: int | None = None
) -> dict[str, Any]:
    """Evaluate one trained model with the protocol (see the module docstring).

    :param model: A trained model of the protocol's architecture.
    :param data: The data subsets (:func:`load_data`).
    :param protocol: The protocol.
    :param verbose: Progress bars of the certifier.
    :param seed: Seed of the attacks' random starts (default: the first training seed).
    :return: A JSON-serialisable dict of metrics.
    """
    from art_jacreg import generalization as gen
    from art_jacreg.attacks import evaluate
    from art_jacreg.models import make_classifier
    from art_jacreg.reporter import JacobianBoundReporter

    seed = protocol.seeds[0] if seed is None else seed
    start = time.perf_counter()
    clf = make_classifier(model)
    y_test, y_train = data.y_test.argmax(1), data.y_train.argmax(1)
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
    robust_gaps, strong = {}, {}
    for key, norm, sweep, ref, head in (
        ("2", 2.0, protocol.eps_l2, protocol.ref_eps_l2, protocol.headline_eps_l2),
        ("inf", np.inf, protocol.eps_linf, protocol.ref_eps_linf, protocol.headline_eps_linf),
    ):
        for eps in sweep:
            res = _fast_pair(clf, xa, ya, eps, norm, protocol, seed)
            robust[key][f"{eps:g}"] = float(1.0 - res.success.mean())
            if eps == ref:
                res_train = _fast_pair(clf, xtr, ytr, eps, norm, protocol, seed)
                robust_gaps[key] = gen.Gap(
                    float(res_train.loss.mean()),
                    float(res.loss.mean()),
                    float(1.0 - res_train.success.mean()),
                    float(1.0 - res.success.mean()),
                    eps=eps,
                    norm=key,
                )
            if eps == head and protocol.standard_autoattack and seed == protocol.seeds[0]:
                strong[key] = _standard(model, xa, ya, ~res.success, eps, norm, protocol, seed)
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
    report = gen.GeneralizationReport.build(
        layers=gen.layer_norms(clf),
        train_margins=gen.margins(clf, data.x_train, y_train),
        data_norm=float(np.linalg.norm(data.x_train.reshape(-1).astype(np.float64))),
        jacobian_train=gen.mean_jacobian_norms(clf, data.x_train[data.idx_train_eval[:n_jac]]),
        jacobian_test=gen.mean_jacobian_norms(clf, data.x_test[:n_jac]),
        standard_gap=standard,
        robust_gaps=robust_gaps,
    )
    return {
        "clean_accuracy": standard.accuracy_test,
        "clean_loss": standard.loss_test,
        "robust_accuracy": robust,
        "standard_autoattack": strong,
        "certified_accuracy": certified,
        "median_certified_radius": median_radius,
        "jacobian": {"train": report.jacobian_train, "test": report.jacobian_test},
        "gaps": {"standard": standard.to_dict(), **{f"robust_{k}": g.to_dict() for k, g in robust_gaps.items()}},
        "generalization": report.to_dict(),
        "eval_seconds": time.perf_counter() - start,
        "attack_seconds": attack_seconds,
    }
