"""Benchmark of JacobianBoundReporter.certify on a plain and a Jacobian-regularised MNIST CNN.

Trains both models on the embedded MNIST (no network access needed), then prints markdown tables:

1. median certified radius per method (l2 and l-inf), the ratio interval / lipschitz, and seconds per 1,000 points;
2. certified accuracy at a few eps next to ART's ``PyTorchIBPClassifier`` (l-inf only) and ART PGD accuracy (an
   empirical upper bound on any certified accuracy);
3. ART's CLEVER score (``clever_u``, an *estimate*, not a bound) next to our certified radius for a few points.

All radii and eps are in raw pixel units ([0, 1]); the models use ART preprocessing ``(0.1307, 0.3081)``, so the eps
given to IBP (which bounds the *normalised* input) is ``eps / 0.3081`` with limits ``[(0 - m) / s, (1 - m) / s]``.
ART's IBP converter rejects an ``nn.Flatten`` child and leaves forward hooks on the model it converts, so it gets a
deep copy re-assembled as a module whose children are only Conv2d / ReLU / Linear and whose ``forward`` flattens
before the first Linear (ART then infers the same reshape). ART itself is not patched.

Usage: ``python benchmarks/bench_certify.py [--n-points 1000] [--epochs 5] [--threads 1]``.

``--speed`` prints only the speed table of issue 13 instead: ``mnist_cnn`` and ``mnist_maxpool_cnn`` (both trained
``--epochs`` epochs), ``"interval"`` on ``--interval-points`` digits (l2 and l-inf) and ``"linear"`` on
``--linear-points`` digits (l2; one thread, extrapolated to seconds per 1,000 digits / per digit), and
``certify(..., n_jobs=2)`` against ``n_jobs=1`` on the same batches, each next to its target with the ratio, plus the
machine's load average (the measurements are wall-clock times).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import os
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from art_jacreg import JacobianBoundReporter
from art_jacreg.data import load_mnist
from art_jacreg.models import make_classifier, mnist_cnn, mnist_maxpool_cnn
from art_jacreg.trainer import JacobianRegularizedTrainer

MEAN, STD = 0.1307, 0.3081
NORMS = {"l2": 2.0, "linf": np.inf}


class _IBPReady(nn.Module):
    """Conv/ReLU/Linear children only (what ART's IBP converter accepts); flattens before the first Linear."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        layers = [m for m in copy.deepcopy(model) if not isinstance(m, nn.Flatten)]
        for i, layer in enumerate(layers):
            self.add_module(f"layer{i}", layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            if isinstance(layer, nn.Linear) and x.dim() > 2:
                x = x.flatten(1)
            x = layer(x)
        return x


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-points", type=int, default=1000, help="test points to certify (default 1000)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per model (default 5)")
    parser.add_argument("--n-train", type=int, default=4000, help="training samples (default: all 4000 embedded)")
    parser.add_argument("--reg-weight", type=float, default=0.05, help="JR weight (l2 regulariser, default 0.05)")
    parser.add_argument("--methods", default="lipschitz,interval,linear", help="comma-separated methods")
    parser.add_argument("--eps-l2", default="0.1,0.3,0.5,1.0", help="l2 eps for certified accuracy")
    parser.add_argument("--eps-linf", default="0.01,0.02,0.05,0.1", help="l-inf eps for certified accuracy")
    parser.add_argument("--clever-points", type=int, default=5, help="points for the CLEVER comparison")
    parser.add_argument(
        "--linear-points", type=int, default=10, help="points for method 'linear' (CROWN costs ~1 s per point)"
    )
    parser.add_argument("--report-points", type=int, default=100, help="points for the report() summary table")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", action="store_true", help="print only the speed table (issue 13 targets)")
    parser.add_argument("--interval-points", type=int, default=200, help="--speed: digits for 'interval'")
    parser.add_argument(
        "--jobs-points",
        type=int,
        default=1000,
        help="--speed: digits for the n_jobs comparison (on fewer, starting the worker processes dominates)",
    )
    return parser.parse_args()


def train(
    x: np.ndarray, y: np.ndarray, epochs: int, reg_weight: float | None, seed: int, arch: Any = mnist_cnn
) -> JacobianBoundReporter:
    torch.manual_seed(seed)
    clf = make_classifier(arch(seed=seed), preprocessing=(MEAN, STD))
    if reg_weight is None:
        clf.fit(x, y, nb_epochs=epochs, batch_size=128)
    else:
        trainer = JacobianRegularizedTrainer(clf, norm=2, reg_weight=reg_weight, seed=seed, verbose=False)
        trainer.fit(x, y, nb_epochs=epochs, batch_size=128)
    return JacobianBoundReporter.from_classifier(clf, verbose=False)


def ibp_certified_accuracy(rep: JacobianBoundReporter, x: np.ndarray, y: np.ndarray, eps: list[float]) -> list[float]:
    from art.estimators.certification.interval import PyTorchIBPClassifier

    # IBP warns, and prints "Inferred reshape" from its converter: silence both.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        ibp = PyTorchIBPClassifier(
            _IBPReady(rep.model),
            nn.CrossEntropyLoss(),
            input_shape=(1, 28, 28),
            nb_classes=10,
            clip_values=(0.0, 1.0),
            preprocessing=(MEAN, STD),
            device_type="cpu",
        )
    limits = [(0.0 - MEAN) / STD, (1.0 - MEAN) / STD]
    out = []
    for e in eps:
        bounds = ibp.predict_intervals(x, bounds=e / STD, limits=limits, batch_size=256)
        out.append(float(np.mean(ibp.certify(bounds, y))))
    return out


def pgd_accuracy(rep: JacobianBoundReporter, x: np.ndarray, y: np.ndarray, eps: float, norm: float) -> float:
    from art.attacks.evasion import ProjectedGradientDescent

    pgd = ProjectedGradientDescent(
        rep, norm=norm, eps=eps, eps_step=eps / 8, max_iter=20, num_random_init=1, batch_size=256, verbose=False
    )
    adv = pgd.generate(x, y=np.eye(10, dtype=np.float32)[y])
    return float(np.mean(rep.predict(adv, batch_size=256).argmax(1) == y))


def _timed(
    rep: JacobianBoundReporter, x: np.ndarray, method: str, norm: float = 2.0, **kwargs: Any
) -> tuple[float, float, np.ndarray]:
    """Wall-clock and CPU seconds (of this process) of one ``certify`` call, and the radii."""
    t, c = time.perf_counter(), time.process_time()
    _, radius = rep.certify(x, norm=norm, method=method, **kwargs)
    return time.perf_counter() - t, time.process_time() - c, radius


def speed_table(args: argparse.Namespace) -> None:
    """The issue-13 speed targets side by side (see the module docstring).

    On a shared machine the wall-clock time grows with the load; the CPU time of the process is shown too, and the
    ratio to the target uses it for the one-process rows (the ``n_jobs`` row compares wall-clock times).
    """
    (x_train, y_train), (x_test, _), _, _ = load_mnist()
    x_train, y_train = x_train[: args.n_train], y_train[: args.n_train]
    rows = []
    load_before = os.getloadavg()
    for name, arch in (("mnist_cnn", mnist_cnn), ("mnist_maxpool_cnn", mnist_maxpool_cnn)):
        rep = train(x_train, y_train, args.epochs, None, args.seed, arch)
        n = args.interval_points
        for norm_name, norm in (("l2", 2.0), ("l-inf", np.inf)):
            wall, cpu, _ = _timed(rep, x_test[:n], "interval", norm, batch_size=128)
            value = f"{wall * 1000.0 / n:.1f} s wall, {cpu * 1000.0 / n:.1f} s CPU / 1000"
            rows.append((name, f"interval {norm_name}, {n} digits", value, "<= 60 s / 1000", cpu * 1000.0 / n / 60.0))
        if name == "mnist_maxpool_cnn":
            n = args.linear_points
            wall, cpu, _ = _timed(rep, x_test[:n], "linear", batch_size=128)
            value = f"{wall / n:.2f} s wall, {cpu / n:.2f} s CPU / digit"
            rows.append((name, f"linear, {n} digits", value, "<= 1 s / digit", cpu / n))
            n = args.jobs_points
            half = -(-n // 2)  # two batches, the same for both runs
            t1, _, r1 = _timed(rep, x_test[:n], "interval", batch_size=half, n_jobs=1)
            t2, _, r2 = _timed(rep, x_test[:n], "interval", batch_size=half, n_jobs=2)
            same = "bit-identical" if r1.tobytes() == r2.tobytes() else "DIFFERENT"
            what = f"interval n_jobs=2 vs 1, {n} digits ({same})"
            rows.append((name, what, f"{t2:.1f} s vs {t1:.1f} s wall", "<= 0.6x", t2 / t1 / 0.6))
    print(f"load average (1, 5, 15 min) before: {load_before}, after: {os.getloadavg()}; {os.cpu_count()} CPUs\n")
    print("| model | measurement | time | target | ratio to target (<= 1 meets it) |")
    print("|---|---|---|---|---|")
    for name, what, value, target, ratio in rows:
        print(f"| {name} | {what} | {value} | {target} | {ratio:.2f} |")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    if args.speed:
        speed_table(args)
        return
    methods = args.methods.split(",")
    eps_lists = {"l2": [float(e) for e in args.eps_l2.split(",")], "linf": [float(e) for e in args.eps_linf.split(",")]}
    (x_train, y_train), (x_test, y_test), _, _ = load_mnist()
    x_train, y_train = x_train[: args.n_train], y_train[: args.n_train]
    x, y = x_test[: args.n_points], y_test[: args.n_points].argmax(1)

    t0 = time.time()
    models = {
        "plain": train(x_train, y_train, args.epochs, None, args.seed),
        f"JR (l2, w={args.reg_weight:g})": train(x_train, y_train, args.epochs, args.reg_weight, args.seed),
    }
    print(f"trained 2 models, {args.epochs} epochs on {len(x_train)} digits in {time.time() - t0:.0f} s\n")

    radius_rows, acc_rows, clever_rows, report_rows = [], [], [], []
    for name, rep in models.items():
        clean = float(np.mean(rep.predict(x, batch_size=256).argmax(1) == y))
        for norm_name, norm in NORMS.items():
            radii, seconds = {}, {}
            for method in methods:
                n = min(args.linear_points, len(x)) if method == "linear" else len(x)
                t = time.time()
                pred, radius = rep.certify(x[:n], norm=norm, method=method, batch_size=128)
                seconds[method] = (time.time() - t) * 1000.0 / n
                radii[method] = np.where(pred == y[:n], radius, 0.0)
                radii[method + "_any"] = radius
            ratio = (
                np.median(radii["interval_any"]) / max(np.median(radii["lipschitz_any"]), 1e-12)
                if {"interval", "lipschitz"} <= set(methods)
                else float("nan")
            )
            radius_rows.append(
                f"| {name} | {norm_name} | {clean:.3f} | "
                + " | ".join(f"{np.median(radii[m + '_any']):.4f}" for m in methods)
                + f" | {ratio:.2f} | "
                + " | ".join(f"{seconds[m]:.1f}" for m in methods)
                + " |"
            )
            eps_list = eps_lists[norm_name]
            ibp = ibp_certified_accuracy(rep, x, y, eps_list) if norm_name == "linf" else [None] * len(eps_list)
            for e, ibp_acc in zip(eps_list, ibp):
                ours = " | ".join(f"{np.mean(radii[m] >= e):.3f}" + ("*" if m == "linear" else "") for m in methods)
                ibp_txt = "n/a (l-inf only)" if ibp_acc is None else f"{ibp_acc:.3f}"
                acc_rows.append(
                    f"| {name} | {norm_name} | {e:g} | {ours} | {ibp_txt} | {pgd_accuracy(rep, x, y, e, norm):.3f} |"
                )
            k = min(args.clever_points, len(x))
            clever_rows += clever_table(rep, name, norm_name, norm, x[:k], radii)
            report_rows.append(report_row(rep, name, norm_name, norm, x[: args.report_points], y[: args.report_points]))

    print("### Median certified radius (raw pixel units; all test points, 0 where nothing is certified)\n")
    print(
        "| model | norm | clean acc | "
        + " | ".join(f"median r ({m})" for m in methods)
        + " | interval / lipschitz | "
        + " | ".join(f"s / 1000 pts ({m})" for m in methods)
        + " |"
    )
    print("|---" * (4 + 2 * len(methods)) + "|")
    print("\n".join(radius_rows))
    print("\n### Certified accuracy (correct and radius >= eps) vs ART IBP (l-inf) and ART PGD-20 accuracy\n")
    print("| model | norm | eps | " + " | ".join(f"ours ({m})" for m in methods) + " | ART IBP | ART PGD acc |")
    print("|---" * (5 + len(methods)) + "|")
    print("\n".join(acc_rows))
    if "linear" in methods:
        print(f"\n\\* 'linear' on the first {args.linear_points} points only (CROWN is slow), timings too.")
    print("\n### ART CLEVER (clever_u, an estimate, not a bound) vs our certified radii (sound)\n")
    print("| model | norm | point | CLEVER | " + " | ".join(f"ours ({m})" for m in methods) + " |")
    print("|---" * (4 + len(methods)) + "|")
    print("\n".join(clever_rows))
    print(
        f"\n### report() at one eps ({args.report_points} points, APGD-CE 20 iterations, certificate 'interval'): "
        "how often the attack beat each estimate / bound\n"
    )
    print(
        "| model | norm | eps | mean loss | mean first-order | mean surrogate | mean attack loss "
        "| mean certified bound | FO beaten | surrogate beaten | certificate beaten |"
    )
    print("|---" * 11 + "|")
    print("\n".join(report_rows))


def clever_table(
    rep: JacobianBoundReporter, name: str, norm_name: str, norm: float, x: np.ndarray, radii: dict[str, np.ndarray]
) -> list[str]:
    from art.metrics import clever_u

    radius_cap = 5.0 if norm == 2 else 0.5
    rows = []
    for i in range(len(x)):
        np.random.seed(i)
        score = clever_u(
            rep, x[i], nb_batches=10, batch_size=50, radius=radius_cap, norm=norm, pool_factor=5, verbose=False
        )
        ours = " | ".join(f"{r[i]:.4f}" if i < len(r) else "-" for m, r in radii.items() if m.endswith("_any"))
        rows.append(f"| {name} | {norm_name} | {i} | {score:.4f} | {ours} |")
    return rows


REPORT_EPS = {"l2": 0.3, "linf": 0.02}


def report_row(rep: JacobianBoundReporter, name: str, norm_name: str, norm: float, x: np.ndarray, y: np.ndarray) -> str:
    eps = REPORT_EPS[norm_name]
    report = rep.report(x, y, eps, norm=norm, attack="apgd", method="interval", attack_params={"max_iter": 20})
    s = report.summary()
    return (
        f"| {name} | {norm_name} | {eps:g} | {s['mean_loss']:.4f} | {s['mean_first_order_loss']:.4f} | "
        f"{s['mean_jacobian_surrogate_loss']:.4f} | {s['mean_attack_loss']:.4f} | {s['mean_certified_loss_bound']:.4f} "
        f"| {s['first_order_exceeded']}/{s['n']} | {s['jacobian_surrogate_exceeded']}/{s['n']} "
        f"| {s['certificate_violations']}/{s['n']} |"
    )


if __name__ == "__main__":
    main()
