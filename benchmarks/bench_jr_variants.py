"""Benchmark of the Jacobian-regularization variants against ART's adversarial trainers (issue 14).

Protocol: ``mnist_cnn(seed)``, the embedded MNIST (4,000 train / 1,000 test), 10 epochs, batch 64, Adam(1e-3) (the
comparison's full preset); JR models use ``preprocessing=(0.1307, 0.3081)``, ART's trainers run through the
harness adapters (:mod:`art_jacreg.compare.defences`, raw ``[0, 1]`` inputs, their documented adaptations).
Metrics: seconds per training epoch (one torch thread), clean accuracy on the 1,000 test digits, robust accuracy
under the harness's AutoAttack-style APGD-CE + APGD-DLR (20 iterations) at l2 eps 1.5 on the first 500 test digits.

Every (configuration, seed) result is cached in a JSON file (``--cache``), so a screen with one seed and the final
runs with three seeds can be separate invocations; the table printed is mean +/- std over the seeds present.

Usage::

    PYTHONPATH=$PWD python benchmarks/bench_jr_variants.py --configs jr-l2-0.01,fbf --seeds 0
    PYTHONPATH=$PWD python benchmarks/bench_jr_variants.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import numpy as np
import torch

EPS_L2 = 1.5
MNIST_NORM = (0.1307, 0.3081)

#: name -> ("jr", trainer keywords) or ("art", harness defence name, train eps per norm).
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("jr", {"reg_weight": 0.0}),
    "jr-l2-0.01": ("jr", {"reg_weight": 0.01}),
    "jr-l2-0.03": ("jr", {"reg_weight": 0.03}),
    "jr-l2-0.1": ("jr", {"reg_weight": 0.1}),
    "jr-l2-0.1-warm3": ("jr", {"reg_weight": 0.1, "reg_warmup_epochs": 3}),
    "jr-l2-0.3-warm3": ("jr", {"reg_weight": 0.3, "reg_warmup_epochs": 3}),
    "loss-l2-1": ("jr", {"target": "loss", "reg_weight": 1.0}),
    "loss-l2-3": ("jr", {"target": "loss", "reg_weight": 3.0}),
    "loss-l2-10": ("jr", {"target": "loss", "reg_weight": 10.0}),
    "margin-l2-0.03": ("jr", {"target": "margin", "reg_weight": 0.03}),
    "margin-l2-0.1": ("jr", {"target": "margin", "reg_weight": 0.1}),
    "fd-loss-l2-1": ("jr", {"target": "loss", "finite_difference": True, "eps": EPS_L2, "reg_weight": 1.0}),
    "fd-loss-l2-3": ("jr", {"target": "loss", "finite_difference": True, "eps": EPS_L2, "reg_weight": 3.0}),
    "fd-margin-l2-0.1": ("jr", {"target": "margin", "finite_difference": True, "eps": EPS_L2, "reg_weight": 0.1}),
    "fgsm-l2": ("jr", {"reg_weight": 0.0, "perturbation": "fgsm", "eps": EPS_L2}),
    "jr-0.01+fgsm": ("jr", {"reg_weight": 0.01, "perturbation": "fgsm", "eps": EPS_L2}),
    "jr-0.03+fgsm": ("jr", {"reg_weight": 0.03, "perturbation": "fgsm", "eps": EPS_L2}),
    "jr-0.1+fgsm": ("jr", {"reg_weight": 0.1, "perturbation": "fgsm", "eps": EPS_L2}),
    "jr-0.1+fgsm-warm3": ("jr", {"reg_weight": 0.1, "perturbation": "fgsm", "eps": EPS_L2, "reg_warmup_epochs": 3}),
    "fd-loss-l2-10": ("jr", {"target": "loss", "finite_difference": True, "eps": EPS_L2, "reg_weight": 10.0}),
    "fgsm-l2-e2.5": ("jr", {"reg_weight": 0.0, "perturbation": "fgsm", "eps": 2.5}),
    "jr-0.01+fgsm-e2.5": ("jr", {"reg_weight": 0.01, "perturbation": "fgsm", "eps": 2.5}),
    "jr-0.003+fgsm-e2.5": ("jr", {"reg_weight": 0.003, "perturbation": "fgsm", "eps": 2.5}),
    "jr-0.01+random": ("jr", {"reg_weight": 0.01, "perturbation": "random", "eps": EPS_L2}),
    "jr-0.03+fgsm-reg": (
        "jr",
        {"reg_weight": 0.03, "perturbation": "fgsm", "eps": EPS_L2, "perturbed_terms": "regularizer"},
    ),
    "loss-1+fgsm": ("jr", {"target": "loss", "reg_weight": 1.0, "perturbation": "fgsm", "eps": EPS_L2}),
    "fbf": ("art", {"defence": "fbf"}),
    "fgsm-art": ("art", {"defence": "fgsm"}),
    "pgd-l2": ("art", {"defence": "pgd-l2"}),
}


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from art_jacreg import load_mnist

    (x_train, y_train), (x_test, y_test), _, _ = load_mnist()
    return x_train, y_train, x_test, y_test.argmax(axis=1)


def run_one(name: str, seed: int, epochs: int, n_attack: int) -> dict[str, Any]:
    """Train configuration ``name`` with ``seed`` and evaluate it.

    :param name: A key of :data:`CONFIGS`.
    :param seed: Seed of the initial weights, the data order and the attack's starts.
    :param epochs: Training epochs.
    :param n_attack: Test digits attacked.
    :return: ``{"seconds_per_epoch", "cpu_seconds_per_epoch", "clean", "robust"}`` (wall and process CPU time
        of training; on a shared machine the CPU time is the steadier cost measure).
    """
    from art_jacreg._art import seeded
    from art_jacreg.attacks import run_attack
    from art_jacreg.compare.defences import TrainContext, get_defence, train_defence
    from art_jacreg.models import make_classifier, mnist_cnn
    from art_jacreg.trainer import JacobianRegularizedTrainer

    x_train, y_train, x_test, y_test = _data()
    kind, params = CONFIGS[name]
    if kind == "jr":
        with seeded(seed):
            clf = make_classifier(mnist_cnn(seed=seed), preprocessing=MNIST_NORM, device_type="cpu")
            trainer = JacobianRegularizedTrainer(clf, norm=2, seed=seed, verbose=False, **params)
            start, cpu = time.perf_counter(), time.process_time()
            trainer.fit(x_train, y_train, batch_size=64, nb_epochs=epochs)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        clf.model.eval()
    else:
        ctx = TrainContext(x_train, y_train, epochs, 64, 1e-3, seed, {"2": EPS_L2, "inf": 0.1})
        cpu = time.process_time()
        outcome = train_defence(get_defence(params["defence"]), ctx)
        seconds, cpu = outcome.seconds, time.process_time() - cpu
        clf = make_classifier(outcome.model, device_type="cpu")
    clean = float((clf.predict(x_test, batch_size=500).argmax(axis=1) == y_test).mean())
    result = run_attack(
        clf, x_test[:n_attack], y_test[:n_attack], EPS_L2, 2.0, "autoattack", 256, {"max_iter": 20}, seed
    )
    robust = float((result.prediction == y_test[:n_attack]).mean())
    return {
        "seconds_per_epoch": seconds / epochs,
        "cpu_seconds_per_epoch": cpu / epochs,
        "clean": clean,
        "robust": robust,
    }


def _load(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _save(path: str, cache: dict[str, Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(cache, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def table(cache: dict[str, Any], names: list[str] | None = None) -> str:
    """Markdown table of mean +/- std per configuration over the cached seeds.

    :param cache: ``{"name/seed": result}``.
    :param names: Configurations to show (default: all cached, in :data:`CONFIGS` order).
    :return: The table.
    """
    rows = [
        "| configuration | seeds | CPU s/epoch | wall s/epoch | clean | AA l2 1.5 |",
        "|---|---|---|---|---|---|",
    ]
    names = names or [n for n in CONFIGS if any(k.split("/")[0] == n for k in cache)]
    for name in names:
        runs = [v for k, v in cache.items() if k.split("/")[0] == name]
        if not runs:
            continue
        cells = []
        for key in ("cpu_seconds_per_epoch", "seconds_per_epoch", "clean", "robust"):
            vals = np.array([r[key] for r in runs])
            digits = 2 if "seconds" in key else 3
            spread = f" ± {vals.std(ddof=1):.{digits}f}" if len(vals) > 1 else ""
            cells.append(f"{vals.mean():.{digits}f}{spread}")
        rows.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    """Command line: run the requested configurations and seeds (cached), then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="jr-l2-0.01,fbf")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-attack", type=int, default=500)
    parser.add_argument("--cache", default="benchmarks/results/jr_variants.json")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        for name, (kind, params) in CONFIGS.items():
            print(f"{name:22s} {kind:4s} {params}")
        return
    torch.set_num_threads(1)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; see --list")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in names:
            cache = _load(args.cache)
            key = f"{name}/{seed}"
            if key in cache:
                continue
            start = time.perf_counter()
            cache[key] = run_one(name, seed, args.epochs, args.n_attack)
            cache = {**_load(args.cache), key: cache[key]}  # keep results written meanwhile by another process
            _save(args.cache, cache)
            r = cache[key]
            print(
                f"{key}: {r['cpu_seconds_per_epoch']:.2f} CPU s/epoch ({r['seconds_per_epoch']:.2f} wall), "
                f"clean {r['clean']:.3f}, AA-l2-1.5 {r['robust']:.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    print(table(_load(args.cache), names))


if __name__ == "__main__":
    main()
