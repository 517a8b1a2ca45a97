"""The estimators of ||J||_F^2 side by side: cost of a step and an epoch, and robustness at the same weight.

Run (also as ``python benchmarks/bench_jacobian.py --estimators [--robustness]``):
     ``python benchmarks/bench_estimators.py [--batch 64] [--repeats 20] [--n-train 1024] [--threads 1]``
     ``python benchmarks/bench_estimators.py --robustness [--train-epochs 5] [--seeds 0 1] [--n-attack 300]``

Timing: one Adam step of :func:`art_jacreg.models.mnist_cnn` on a batch of digits (plain cross-entropy, then
cross-entropy + 0.01 x the one-direction estimate of each ``estimator``), and one training epoch through
:class:`~art_jacreg.JacobianRegularizedTrainer` next to ART's ``classifier.fit``; all variants interleaved in rounds,
median over rounds. Robustness: ``mnist_cnn`` trained on the embedded digits (4,000) with each estimator at the same
``reg_weight`` (and plain), then clean accuracy (1,000 test digits), exact ``||J||_F`` (mean over 500 test digits)
and APGD-CE l2 accuracy at eps 1.5 (100 iterations, on the first ``--n-attack`` test digits).

Measured 2026-12-02 on this project's machine (one torch thread, 2 CPU cores shared with other jobs, load average
5-7, torch 2.14.1, CPU only). ``python benchmarks/bench_jacobian.py --estimators --threads 1 --repeats 30``
(second of two runs; the first gave 2.52 / 2.97 / 2.71 x plain per step and 2.50 / 2.92 / 2.69 x
``classifier.fit`` per epoch)::

    step (batch 64)                ms     x plain   x vjp
    plain cross-entropy            14.4   1.00      0.36
    estimator='vjp'                40.1   2.78      1.00
    estimator='jvp'                43.1   2.99      1.08
    estimator='finite_difference'  43.7   3.03      1.09

    epoch (1,024 digits, batch 64)    s      x classifier.fit   x trainer vjp
    ART classifier.fit                0.265  1.00               0.39
    trainer, reg_weight=0             0.296  1.12               0.43
    trainer, estimator='vjp'          0.683  2.58               1.00
    trainer, estimator='jvp'          0.805  3.04               1.18
    trainer, estimator='finite_difference'  0.747  2.82         1.09

``python benchmarks/bench_jacobian.py --estimators --robustness --threads 1 --seeds 0 1 --train-epochs 5
--n-attack 300`` (plus ``--only vjp --weight 0.02``), 4,000 digits, batch 64, 5 epochs, mean of seeds 0 and 1
(per seed); s / epoch is noisy here (other jobs shared the cores), the step table above is the cost measurement::

    training                 weight  clean (1,000)         ||J||_F (500)       APGD-l2 1.5 (300)
    plain                    0       0.940 (0.937, 0.942)  9.36 (9.62, 9.11)   0.288 (0.230, 0.347)
    'vjp'                    0.01    0.918 (0.913, 0.923)  3.91 (3.77, 4.05)   0.512 (0.477, 0.547)
    'jvp'                    0.01    0.917 (0.911, 0.924)  3.87 (3.76, 3.98)   0.510 (0.480, 0.540)
    'finite_difference'      0.01    0.921 (0.918, 0.924)  3.54 (3.58, 3.50)   0.558 (0.557, 0.560)
    'vjp'                    0.02    0.914 (0.911, 0.917)  3.17 (3.10, 3.24)   0.560 (0.540, 0.580)

Verdict: none of the forward estimators is cheaper on this CPU: the double backward of the vector-Jacobian product
costs less than the dual forward (``"jvp"``, 1.08-1.18x) or the two extra forward passes and their backward
(``"finite_difference"``, 1.07-1.09x). ``"jvp"`` trains the same objective without bias and gives the same model
quality as ``"vjp"`` (0.510 vs 0.512 APGD). ``"finite_difference"`` (step 0.01) regularises more strongly at the same
weight (the secant across ReLU kinks penalises curvature too): at weight 0.01 it matches ``"vjp"`` at 0.02 (APGD
0.558 vs 0.560, clean 0.921 vs 0.914, differences within the two seeds' spread), so at equal robustness it is not
cheaper either. ``"vjp"`` stays the default. Not measured: GPUs (where the balance of a dual forward against a double
backward may differ) and models with operations whose forward-mode formulas are slow.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from art_jacreg.data import load_mnist
from art_jacreg.forward_norms import ESTIMATORS, frobenius_norm_sq_finite_difference, frobenius_norm_sq_jvp
from art_jacreg.models import make_classifier, mnist_cnn
from art_jacreg.norms import frobenius_norm_sq_from_logits

WEIGHT = 0.01


def make_step(estimator: str | None) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """One timed Adam step of a fresh ``mnist_cnn``: plain (``None``) or regularised by ``estimator``."""
    model = mnist_cnn(seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        optimizer.zero_grad()
        if estimator is None:
            logits, reg = model(x), None
        elif estimator == "vjp":
            x_in = x.clone().requires_grad_(True)
            logits = model(x_in)
            reg = frobenius_norm_sq_from_logits(x_in, logits, 1, create_graph=True, generator=gen)
        elif estimator == "jvp":  # the logits come from the dual forward pass
            logits, reg = frobenius_norm_sq_jvp(model, x, 1, create_graph=True, generator=gen)
        else:
            logits = model(x)
            reg = frobenius_norm_sq_finite_difference(model, x, 1, create_graph=True, generator=gen)
        loss = F.cross_entropy(logits, y) if reg is None else F.cross_entropy(logits, y) + WEIGHT * reg.mean()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def interleaved_medians(variants: dict[str, Callable[[], float | None]], rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds of each variant over ``rounds`` interleaved rounds after ``warmup`` rounds. A variant returns
    its own time or ``None`` (then the call is timed here)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(warmup + rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            own = run()
            if index >= warmup:
                times[name].append(own if own is not None else time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def print_ratio_table(median: dict[str, float], what: str, unit: str, scale: float, base: str, ref: str) -> None:
    """A markdown table of medians with ratios to ``base`` and to ``ref`` (keys of ``median``)."""
    print(f"| {what} | {unit} | x {base} | x {ref} |")
    print("|---|---:|---:|---:|")
    for name, value in median.items():
        print(f"| {name} | {scale * value:.3f} | {value / median[base]:.2f} | {value / median[ref]:.2f} |")
    print()


def timing_benchmark(args: argparse.Namespace) -> None:
    """Per-step and per-epoch times of every estimator next to plain training, same run."""
    from art_jacreg.trainer import JacobianRegularizedTrainer

    (x_train, y_train), _, _, _ = load_mnist()
    x, y = torch.from_numpy(x_train[: args.batch]), torch.from_numpy(y_train[: args.batch].argmax(axis=1))
    steps = {"plain cross-entropy": make_step(None), **{f"estimator={e!r}": make_step(e) for e in ESTIMATORS}}
    step_median = interleaved_medians({k: (lambda s=s: s(x, y)) for k, s in steps.items()}, args.repeats, 3)
    print(f"training step: batch {args.batch}, median of {args.repeats} rounds, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}, reg_weight {WEIGHT}, one direction / projection")  # fmt: skip
    print()
    print_ratio_table(step_median, "step", "ms", 1000.0, "plain cross-entropy", "estimator='vjp'")

    x_np, y_np = x_train[: args.n_train], y_train[: args.n_train].argmax(axis=1)

    def art_fit() -> None:
        make_classifier(mnist_cnn(seed=0), device_type="cpu").fit(x_np, y_np, batch_size=args.batch, nb_epochs=1)

    def trainer(weight: float, estimator: str) -> Callable[[], None]:
        def run() -> None:
            clf = make_classifier(mnist_cnn(seed=0), device_type="cpu")
            JacobianRegularizedTrainer(clf, reg_weight=weight, seed=0, verbose=False, jacobian_estimator=estimator).fit(
                x_np, y_np, batch_size=args.batch, nb_epochs=1
            )

        return run

    epochs = {"ART classifier.fit": art_fit, "trainer, reg_weight=0": trainer(0.0, "vjp")}
    epochs.update({f"trainer, estimator={e!r}": trainer(WEIGHT, e) for e in ESTIMATORS})
    epoch_median = interleaved_medians(epochs, args.epoch_repeats, 1)  # type: ignore[arg-type]
    print(f"training epoch: {args.n_train} digits, batch {args.batch}, median of {args.epoch_repeats} rounds")
    print()
    print_ratio_table(epoch_median, "epoch", "s", 1.0, "ART classifier.fit", "trainer, estimator='vjp'")


def robustness_benchmark(args: argparse.Namespace) -> None:
    """Train with each estimator (and plain) at the same weight; clean accuracy, exact ||J||_F, APGD-l2 accuracy."""
    from art_jacreg.attacks import run_attack
    from art_jacreg.trainer import JacobianRegularizedTrainer

    (x_train, y_train), (x_test, y_test), _, _ = load_mnist()
    y_train_idx, y_test_idx = y_train.argmax(axis=1), y_test.argmax(axis=1)
    settings = [("plain", 0.0, "vjp")] + [(e, args.weight, e) for e in ESTIMATORS]
    settings = [s for s in settings if s[0] in args.only]
    rows: dict[str, list[tuple[float, ...]]] = {name: [] for name, _, _ in settings}
    for seed in args.seeds:
        for name, weight, estimator in settings:
            clf = make_classifier(mnist_cnn(seed=seed), device_type="cpu")
            trainer = JacobianRegularizedTrainer(
                clf, reg_weight=weight, seed=seed, verbose=False, jacobian_estimator=estimator
            )
            start = time.perf_counter()
            trainer.fit(x_train, y_train_idx, batch_size=args.batch, nb_epochs=args.train_epochs)
            seconds = (time.perf_counter() - start) / args.train_epochs
            clean = float((clf.predict(x_test).argmax(axis=1) == y_test_idx).mean())
            jac = float(np.sqrt(trainer.compute_regularizer(x_test[:500], exact=True)).mean())
            n = args.n_attack
            result = run_attack(clf, x_test[:n], y_test_idx[:n], eps=1.5, norm=2.0, attack="apgd", seed=seed)
            robust = float((result.prediction == y_test_idx[:n]).mean())
            rows[name].append((seconds, clean, jac, robust))
            print(f"seed {seed} {name}: {seconds:.2f} s/epoch, clean {clean:.3f}, ||J||_F {jac:.2f}, "
                  f"APGD-l2 {robust:.3f}", flush=True)  # fmt: skip
    print()
    print(f"mnist_cnn, {x_train.shape[0]} training digits, batch {args.batch}, {args.train_epochs} epochs, "
          f"Adam(1e-3), reg_weight {args.weight}, one direction / projection, seeds {args.seeds}; mean over seeds "
          "(per seed)")  # fmt: skip
    print()
    print("| training | s / epoch | clean (1,000) | ||J||_F (500) | APGD-l2 1.5 |")
    print("|---|---:|---:|---:|---:|")
    for name, values in rows.items():
        cells = []
        for column, fmt in zip(range(4), (".2f", ".3f", ".2f", ".3f"), strict=True):
            per_seed = [v[column] for v in values]
            detail = " (" + ", ".join(f"{v:{fmt}}" for v in per_seed) + ")" if len(per_seed) > 1 else ""
            cells.append(f"{statistics.mean(per_seed):{fmt}}{detail}")
        label = "plain (reg_weight=0)" if name == "plain" else f"estimator={name!r}"
        print(f"| {label} | " + " | ".join(cells) + " |")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this benchmark (shared with ``bench_jacobian.py --estimators``)."""
    parser.add_argument("--robustness", action="store_true", help="train and attack instead of timing")
    parser.add_argument("--epoch-repeats", type=int, default=3, help="timed rounds of whole epochs")
    parser.add_argument("--train-epochs", type=int, default=5, help="--robustness: training epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="--robustness: seeds")
    parser.add_argument("--weight", type=float, default=WEIGHT, help="--robustness: reg_weight")
    parser.add_argument("--n-attack", type=int, default=300, help="--robustness: test digits attacked")
    parser.add_argument("--only", nargs="+", default=["plain", *ESTIMATORS], choices=["plain", *ESTIMATORS],
                        help="--robustness: the trainings to run")  # fmt: skip


def run(args: argparse.Namespace) -> None:
    """Run the timing or (``--robustness``) the training benchmark."""
    if args.robustness:
        robustness_benchmark(args)
    else:
        timing_benchmark(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds of steps (after 3 warm-up rounds)")
    parser.add_argument("--n-train", type=int, default=1024, help="digits per timed epoch")
    parser.add_argument("--threads", type=int, default=1)
    add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
