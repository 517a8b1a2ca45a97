"""Benchmark of certified training (issue 12): global (GloRo / IBP) vs local bounds, certified by the reporter.

Protocol: ``mnist_cnn`` wrapped by ``make_classifier(..., preprocessing=(0.1307, 0.3081))``, the embedded 4,000 / 1,000
MNIST digits (:func:`art_jacreg.load_mnist`), Adam 1e-3, batch 128, trained by
:class:`art_jacreg.CertifiedJacobianTrainer` (plain reference: :class:`art_jacreg.JacobianRegularizedTrainer` with
``reg_weight=0``, the same loop), then
``JacobianBoundReporter.from_classifier(clf).certify(x_test, norm, method="interval")``;
a digit counts as certified at ``eps`` when it is classified correctly and its certified radius is ``>= eps``. The
training bounds (:class:`art_jacreg.certify.objectives.CertifiedMargins`) are never reported as certificates.

Prints one markdown table: training (bound, norm, eps, loss), clean accuracy, certified accuracy at the eps, training
seconds per epoch and its ratio to plain cross-entropy training with the same loop.

Usage: ``python benchmarks/bench_certified_training.py [--quick] [--runs global:2:0.3,local:2:0.3,...]``; a run is
``bound:norm:eps[:key=value...]`` with keys ``variant`` (``ce`` / ``bottom``), ``kappa`` (final clean-loss weight),
``ramp`` (fraction of the steps over which eps grows from 0), ``train_eps`` (multiplier of the training eps),
``epochs``, ``crown`` (l-inf local: 1 for CROWN-IBP), ``depth`` (l2 local: ReLU layers the local Jacobian rows
pass, -1 for all), ``reg`` (weight of the Jacobian regulariser), ``lr`` (``cosine`` / ``step`` / ``constant``, the
trainer's ``lr_schedule``); unspecified keys take the trainer's defaults. ``--lr`` sets Adam's learning rate of every
row, ``--art-ibp 0.1,0.3`` adds rows for ART's IBP trainer, ``--model mnist_maxpool_cnn`` the max-pool CNN.

``--seeds 0 1 2`` runs every row per seed and prints mean ± sample std cells.

Measured: ``benchmarks/results/bench_certified_training_*.txt`` (the ``_seeds_`` files start with their command);
the README and the guide page "Choosing norm and reg_weight" (section "Certified training") quote them.
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import numpy as np
import torch

from art_jacreg import CertifiedJacobianTrainer, JacobianBoundReporter, JacobianRegularizedTrainer, models
from art_jacreg.attacks import run_attack
from art_jacreg.data import load_mnist
from art_jacreg.models import make_classifier

MEAN, STD = 0.1307, 0.3081
DEFAULT_RUNS = "global:2:0.3,local:2:0.3,global:2:1.0,local:2:1.0,global:inf:0.1,local:inf:0.1"
#: Run keys -> CertifiedJacobianTrainer arguments.
#: AutoAttack radii per norm (the fast APGD-CE + APGD-DLR pair of the comparison harness, 20 iterations).
AA_EPS = {2.0: (1.0, 1.5), math.inf: (0.1, 0.3)}
KEYS = {"lr": "lr_schedule", "variant": "loss", "kappa": "kappa", "ramp": "ramp", "train_eps": "train_eps_factor",
        "crown": "crown", "depth": "depth", "reg": "reg_weight"}  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated bound:norm:eps[:key=value] runs")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="2,000 training digits, 10 epochs, 300 test digits")
    parser.add_argument("--seed", type=int, default=0, help="one seed (ignored when --seeds is given)")
    parser.add_argument("--seeds", type=int, nargs="+", help="several seeds: cells become mean +/- std over them")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-training reference row")
    parser.add_argument("--model", default="mnist_cnn", choices=("mnist_cnn", "mnist_maxpool_cnn"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (all rows)")
    parser.add_argument(
        "--art-ibp", default="", help="comma-separated l-inf eps for ART's IBP trainer rows (Gowal ramp)"
    )
    parser.add_argument("--n-attack", type=int, default=500, help="test digits attacked by AutoAttack (0: skip)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.n_train, args.n_test = min(args.epochs, 10), min(args.n_train, 2000), min(args.n_test, 300)
    args.seeds = args.seeds or [args.seed]
    return args


def parse_run(spec: str) -> dict:
    bound, norm, eps, *extra = spec.split(":")
    run = {"bound": bound, "norm": 2.0 if norm in ("2", "l2") else math.inf, "eps": float(eps)}
    for item in extra:
        key, value = item.split("=")
        if key not in (*KEYS, "epochs"):
            raise SystemExit(f"unknown run key {key!r} in {spec!r}; known: {', '.join((*KEYS, 'epochs'))}")
        run[key] = value if key in ("variant", "lr") else float(value)
    return run


def train(run: dict | None, x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> tuple:
    """Train the model; ``run=None`` is plain cross-entropy. Returns ``(classifier, trainer, s per epoch)``."""
    torch.manual_seed(args.seed)
    clf = make_classifier(getattr(models, args.model)(seed=args.seed), preprocessing=(MEAN, STD), lr=args.lr)
    epochs = args.epochs
    if run is None:
        trainer = JacobianRegularizedTrainer(clf, reg_weight=0.0, seed=args.seed, verbose=False)
    else:
        epochs = int(run.get("epochs", epochs))
        options = {KEYS[k]: v for k, v in run.items() if k in KEYS}
        if "crown" in options:
            options["crown"] = bool(options["crown"])
        if "depth" in options:
            options["depth"] = None if options["depth"] < 0 else int(options["depth"])
        trainer = CertifiedJacobianTrainer(
            clf, norm=run["norm"], eps=run["eps"], bound=run["bound"], seed=args.seed, verbose=False, **options
        )
    t0 = time.perf_counter()
    trainer.fit(x, y, batch_size=args.batch_size, nb_epochs=epochs)
    return clf, trainer, (time.perf_counter() - t0) / epochs


def train_art_ibp(eps: float, x: np.ndarray, y: np.ndarray, args: argparse.Namespace) -> tuple:
    """ART's ``AdversarialTrainerCertifiedIBPPyTorch`` with the comparison's Gowal ramp, same data and epochs."""
    from art_jacreg.compare.art_glue import classifier
    from art_jacreg.compare.registry import get_defence
    from art_jacreg.compare.training import TrainContext, train_defence

    ctx = TrainContext(x, y, args.epochs, args.batch_size, args.lr, args.seed, {"2": 1.0, "inf": eps}, model=args.model)
    outcome = train_defence(get_defence("ibp"), ctx)
    return classifier(outcome.model, ctx), outcome.seconds / args.epochs  # raw inputs, as the harness trains it


def attacked(clf, x: np.ndarray, y: np.ndarray, norm: float, n: int) -> list[float]:
    """AutoAttack accuracy (fast pair) on the first ``n`` digits at the radii of :data:`AA_EPS` (empty for n 0)."""
    if n <= 0:
        return []
    return [float(np.mean(run_attack(clf, x[:n], y[:n], e, norm, "autoattack", 256, {"max_iter": 20}).prediction
                          == y[:n])) for e in AA_EPS[norm]]  # fmt: skip


def shown_aa(accuracies: list[float]) -> str:
    """AutoAttack accuracies as ``a / b`` (``-`` when skipped)."""
    return " / ".join(f"{a:.3f}" for a in accuracies) or "-"


def certify(clf, x: np.ndarray, y: np.ndarray, norm: float, eps: float) -> tuple[float, float, float]:
    """Clean accuracy, certified accuracy at ``eps`` (``method="interval"``) and the seconds it took."""
    t0 = time.perf_counter()
    pred, radius = JacobianBoundReporter.from_classifier(clf, verbose=False).certify(x, norm=norm, method="interval")
    return float(np.mean(pred == y)), float(np.mean((pred == y) & (radius >= eps))), time.perf_counter() - t0


def cell(values: list[float], fmt: str = ".3f") -> str:
    """One table cell: the value, or ``mean +/- std`` (sample std) over the seeds."""
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{np.mean(values):{fmt}} ± {np.std(values, ddof=1):{fmt}}"


def row(clean: float, cert: list[float], aa: list[float], seconds: float, plain: float) -> dict:
    """One row of one seed; the cost ratio is to the same seed's plain run (``nan`` without one)."""
    return {"clean": clean, "cert": cert, "aa": aa, "sec": seconds, "ratio": seconds / plain if plain else float("nan")}


def one_seed(seed: int, args: argparse.Namespace, data: tuple) -> dict[str, dict]:
    """Every row of the benchmark for one seed: ``{row name: {"clean", "cert", "aa", "sec", "ratio"}}``."""
    x_train, y_train, x_test, y_test = data
    args.seed = seed
    plain = 0.0
    rows: dict[str, dict] = {}
    if not args.no_plain:
        clf, _, plain = train(None, x_train, y_train, args)
        pred = clf.predict(x_test).argmax(1)
        rows["plain CE"] = row(float(np.mean(pred == y_test)), [], [], plain, plain)
    for spec in filter(None, args.runs.split(",")):
        run = parse_run(spec)
        clf, trainer, per_epoch = train(run, x_train, y_train, args)
        clean, cert, cert_s = certify(clf, x_test, y_test, run["norm"], run["eps"])
        params = trainer.get_params()
        shown = ("loss", "ramp", "kappa_start", "kappa", "train_eps_factor", "reg_weight", "lr_schedule")
        extra = ",".join(f"{k}={params[k]}" if isinstance(params[k], str) else f"{k}={params[k]:g}" for k in shown)
        name = f"{run['bound']} l{'2' if run['norm'] == 2 else 'inf'} eps {run['eps']:g} ({extra})"
        aa = attacked(clf, x_test, y_test, run["norm"], args.n_attack)
        rows[name] = row(clean, [cert], aa, per_epoch, plain)
        print(f"seed {seed} {name}: clean {clean:.3f} certified {cert:.3f} AA {shown_aa(aa)} "
              f"{per_epoch:.2f} s/epoch (certify {cert_s:.0f} s)", flush=True)  # fmt: skip
    for eps in (float(e) for e in filter(None, args.art_ibp.split(","))):
        clf, per_epoch = train_art_ibp(eps, x_train, y_train, args)
        clean, cert, _ = certify(clf, x_test, y_test, math.inf, eps)
        aa = attacked(clf, x_test, y_test, math.inf, args.n_attack)
        name = f"ART IBP trainer linf eps {eps:g} (Gowal ramp)"
        rows[name] = row(clean, [cert], aa, per_epoch, plain)
        print(f"seed {seed} {name}: clean {clean:.3f} certified {cert:.3f} AA {shown_aa(aa)} {per_epoch:.2f} s/epoch")
    return rows


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    (x_train, y_train), (x_test, y_test), _, _ = load_mnist()
    data = (x_train[: args.n_train], y_train[: args.n_train], x_test[: args.n_test], y_test[: args.n_test].argmax(1))
    seeds = list(args.seeds)
    per_seed = [one_seed(seed, args, data) for seed in seeds]
    print(f"\n{args.model}, {args.n_train} training digits, {args.epochs} epochs, batch {args.batch_size}, "
          f"Adam {args.lr:g}, {args.n_test} test digits certified, AutoAttack (fast pair, 20 iterations) on "
          f"{args.n_attack} at l2 1.0 / 1.5 or l-inf 0.1 / 0.3, seeds {', '.join(map(str, seeds))} "
          f"(cells: mean ± sample std over the seeds), one torch thread\n")  # fmt: skip
    print("| training | clean | certified at eps | AutoAttack | train s/epoch | ratio to plain |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in per_seed[0]:
        got = [rows[name] for rows in per_seed]
        attacks = [row["aa"] for row in got if row["aa"]]
        aa = " / ".join(cell([a[i] for a in attacks]) for i in range(len(attacks[0]))) if attacks else "-"
        print(f"| {name} | {cell([r['clean'] for r in got])} | {cell([c for r in got for c in r['cert']])} | {aa} | "
              f"{cell([r['sec'] for r in got], '.2f')} | {cell([r['ratio'] for r in got], '.1f')}x |")  # fmt: skip


if __name__ == "__main__":
    main()
