"""Seconds per training step of Jacobian regularisers next to plain cross-entropy, measured side by side.

Run: ``python benchmarks/bench_jacobian.py [--batch 64] [--repeats 20] [--threads 2]``
     ``python benchmarks/bench_jacobian.py --epoch [--n-train 1024] [--repeats 5] [--threads 1]``
     ``python benchmarks/bench_jacobian.py --ddp [--n-train 1024] [--batch 64] [--repeats 3] [--rounds 2]``
     ``python benchmarks/bench_jacobian.py --estimators --threads 1 [--robustness]`` (bench_estimators.py)

``--estimators`` compares the estimators of ||J||_F^2 (``estimator="vjp"``, ``"jvp"``, ``"finite_difference"``):
per-step and per-epoch time next to plain training, or (``--robustness``) clean accuracy, exact ||J||_F and APGD-l2
accuracy after training with each at the same ``reg_weight``; the measured tables are in that module's docstring
(one CPU thread: ``"vjp"`` is the cheapest, ``"jvp"`` 1.08-1.18x and ``"finite_difference"`` 1.07-1.09x its step and
epoch time, so ``"vjp"`` stays the default).

``--ddp`` compares training throughput (digits per second, JR with one projection, ``mnist_cnn``) of one process
with one thread against 2 processes with one thread each under ``torch.distributed`` (gloo, DDP, the torchrun
environment), at the same global batch (``--batch``; ``--batch / 2`` per rank). Each run is a fresh process that
trains one warm-up epoch and then times ``--repeats`` epochs; the two set-ups alternate for ``--rounds`` rounds and
the medians are compared (issue 13's target: 2 processes >= 1.6x one process).

``--epoch`` times whole training epochs instead: ART's ``classifier.fit``, the trainer with ``reg_weight=0``, the
trainer with one random projection, and a 20-line reference JR loop (one projection, shared forward, no guard),
interleaved, median over rounds (issue 13's targets: JR epoch <= 2.0x ``classifier.fit`` and <= 1.0x the reference
loop; ``reg_weight=0`` <= 1.1x ``classifier.fit``).

Every variant does one full optimizer step (forward, regulariser, backward, Adam update) on the same small MNIST
CNN (:func:`art_jacreg.models.mnist_cnn`) and the same batch. Variants are timed in interleaved rounds so that
machine noise hits them alike; the table reports the median over rounds and ratios to plain cross-entropy and to
the reference loop (one ``autograd.grad(create_graph=True)`` per output row in a Python loop, the straightforward
exact ||J||_{1,1}).

Targets (from the issue): 1-projection ||J||_F^2 <= 2.0x plain; exact ||J||_{1,1} <= 0.6x the reference loop;
1-row ||J||_{1,1} <= 2.2x plain.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import bench_estimators
import torch
import torch.nn.functional as F

from art_jacreg.data import load_mnist
from art_jacreg.models import mnist_cnn
from art_jacreg.norms import frobenius_norm_sq_from_logits, l11_norm_from_logits


def reference_l11(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Exact ||J||_{1,1} the straightforward way: one double-backprop gradient per output row."""
    total = torch.zeros(x.shape[0])
    for k in range(out.shape[1]):
        (row,) = torch.autograd.grad(out[:, k].sum(), x, create_graph=True)
        total = total + row.abs().flatten(1).sum(dim=1)
    return total


def make_step(
    model: torch.nn.Module,
    regulariser: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor] | None,
    weight: float = 0.01,
) -> Callable[[torch.Tensor, torch.Tensor], float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        optimizer.zero_grad()
        x_in = x.detach().clone().requires_grad_(regulariser is not None)
        logits = model(x_in)  # one forward pass, shared by the loss and the regulariser
        loss = F.cross_entropy(logits, y)
        if regulariser is not None:
            loss = loss + weight * regulariser(x_in, logits, gen).mean()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def print_table(median: dict[str, float], labels: tuple[str, str, float, str], base: float, ref: float) -> None:
    """A markdown table of medians with ratios to ``base`` and to the reference loop ``ref``."""
    what, unit, scale, base_name = labels
    print(f"| {what} | {unit} | x {base_name} | x reference loop |")
    print("|---|---:|---:|---:|")
    for name, value in median.items():
        print(f"| {name} | {scale * value:.3f} | {value / base:.2f} | {value / ref:.2f} |")
    print()


def print_checks(checks: list[tuple[str, float, float]]) -> None:
    """One PASS/MISS line per ``(label, measured ratio, target)``."""
    for label, ratio, target in checks:
        print(f"{'PASS' if ratio <= target else 'MISS'}  {label}: measured {ratio:.2f}")


def reference_jr_epoch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
    """The 20-line reference: shuffled batches, CE + 0.01 * 1-projection ||J||_F^2, Adam; no guard, no history."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(x.shape[0], generator=gen)
    for start in range(0, x.shape[0], batch):
        idx = order[start : start + batch]
        optimizer.zero_grad()
        x_in = x[idx].clone().requires_grad_(True)
        logits = model(x_in)
        reg = frobenius_norm_sq_from_logits(x_in, logits, n_projections=1, create_graph=True, generator=gen)
        (F.cross_entropy(logits, y[idx]) + 0.01 * reg.mean()).backward()
        optimizer.step()


def epoch_benchmark(args: argparse.Namespace) -> None:
    """Seconds per training epoch: ART's fit, the trainer (plain and JR), the reference loop; interleaved rounds."""
    from art_jacreg.models import make_classifier
    from art_jacreg.trainer import JacobianRegularizedTrainer

    (x_train, y_train), _, _, _ = load_mnist()
    x_np, y_np = x_train[: args.n_train], y_train[: args.n_train].argmax(axis=1)
    x_t, y_t = torch.from_numpy(x_np), torch.from_numpy(y_np)

    def art_fit() -> None:
        make_classifier(mnist_cnn(seed=0)).fit(x_np, y_np, batch_size=args.batch, nb_epochs=1)

    def trainer(weight: float) -> Callable[[], None]:
        def run() -> None:
            clf = make_classifier(mnist_cnn(seed=0))
            JacobianRegularizedTrainer(clf, reg_weight=weight, seed=0, verbose=False).fit(
                x_np, y_np, batch_size=args.batch, nb_epochs=1
            )

        return run

    variants = {
        "ART classifier.fit": art_fit,
        "trainer, reg_weight=0": trainer(0.0),
        "trainer, JR 1 projection": trainer(0.01),
        "reference JR loop (1 projection)": lambda: reference_jr_epoch(mnist_cnn(seed=0), x_t, y_t, args.batch),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.repeats + 1):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            if round_index >= 1:
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    fit, ref = median["ART classifier.fit"], median["reference JR loop (1 projection)"]
    print(f"{args.n_train} digits, batch {args.batch}, {args.repeats} rounds, {torch.get_num_threads()} threads")
    print()
    print_table(median, ("one epoch", "s", 1.0, "classifier.fit"), fit, ref)
    print_checks(
        [
            ("JR epoch <= 2.0x classifier.fit", median["trainer, JR 1 projection"] / fit, 2.0),
            ("JR epoch <= 1.0x reference loop", median["trainer, JR 1 projection"] / ref, 1.0),
            ("reg_weight=0 <= 1.1x classifier.fit", median["trainer, reg_weight=0"] / fit, 1.1),
        ]
    )


def ddp_worker(args: argparse.Namespace) -> None:
    """One process of ``--ddp``: (join the group if ``WORLD_SIZE > 1``,) warm up, time epochs, print JSON."""
    import torch.distributed as dist

    from art_jacreg.models import make_classifier
    from art_jacreg.trainer import JacobianRegularizedTrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    (x_train, y_train), _, _, _ = load_mnist()
    x_np, y_np = x_train[: args.n_train], y_train[: args.n_train].argmax(axis=1)
    trainer = JacobianRegularizedTrainer(make_classifier(mnist_cnn(seed=0), device_type="cpu"), reg_weight=0.01,
                                         n_projections=1, seed=0, verbose=False)  # fmt: skip
    batch = args.batch // world
    trainer.fit(x_np, y_np, batch_size=batch, nb_epochs=1)  # warm-up
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    trainer.fit(x_np, y_np, batch_size=batch, nb_epochs=args.repeats)
    elapsed = time.perf_counter() - start
    if world > 1:
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"digits_per_s": args.n_train * args.repeats / elapsed, "seconds": elapsed}))


def _launch_ddp(args: argparse.Namespace, world: int, coupled: bool = True) -> float:
    """Digits per second of one ``--ddp`` run of ``world`` processes with one thread each; ``coupled=False`` runs
    them as independent single processes on ``1/world`` of the data and batch each (no DDP: the machine's ceiling).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env["WORLD_SIZE"] = str(world if coupled else 1)
    batch, n_train = (args.batch, args.n_train) if coupled else (args.batch // world, args.n_train // world)
    command = [sys.executable, __file__, "--ddp-worker", "--threads", "1", "--batch", str(batch),
               "--n-train", str(n_train), "--repeats", str(args.repeats)]  # fmt: skip
    procs = [
        subprocess.Popen(command, env=dict(env, RANK=str(r if coupled else 0), LOCAL_RANK=str(r if coupled else 0)),
                         stdout=subprocess.PIPE, text=True)
        for r in range(world)
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=1800)[0] for proc in procs]
    if any(proc.returncode != 0 for proc in procs):
        raise RuntimeError(f"a --ddp run with {world} processes failed")
    rates = [float(json.loads(out.strip().splitlines()[-1])["digits_per_s"]) for out in outputs if out.strip()]
    return rates[0] if coupled else sum(rates)


def ddp_benchmark(args: argparse.Namespace) -> None:
    """Throughput of 2 DDP processes (1 thread each) against 1 process (1 thread), same global batch; 2 independent
    processes (no communication) show what the machine allows."""
    setups = {
        f"1 process, batch {args.batch}": lambda: _launch_ddp(args, 1),
        f"2 DDP processes, batch {args.batch // 2} each": lambda: _launch_ddp(args, 2),
        f"2 independent processes (no DDP), batch {args.batch // 2} each": lambda: _launch_ddp(args, 2, False),
    }
    rates: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(args.rounds):
        for name, launch in setups.items():
            rates[name].append(launch())
    median = {name: statistics.median(values) for name, values in rates.items()}
    one, two, free = median.values()
    print(f"JR (1 projection) on mnist_cnn, {args.n_train} digits, global batch {args.batch}, {args.repeats} timed "
          f"epochs per run, {args.rounds} rounds, 1 thread per process, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")  # fmt: skip
    print()
    print("| set-up | digits / s (median) | x 1 process | runs |")
    print("|---|---:|---:|---|")
    for name, value in median.items():
        print(f"| {name} | {value:.1f} | {value / one:.2f} | {', '.join(f'{r:.1f}' for r in rates[name])} |")
    print()
    print(f"throughput ratio, 2 DDP processes / 1 process: {two / one:.2f} (target >= 1.6); DDP / independent "
          f"processes: {two / free:.2f}")  # fmt: skip
    print_checks([("2-process DDP time per digit <= 0.625x one process (i.e. throughput >= 1.6x)", one / two, 0.625)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (after 3 warm-up rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epoch", action="store_true", help="time whole epochs (trainer vs ART's fit)")
    parser.add_argument("--n-train", type=int, default=1024, help="training digits per epoch (--epoch, --ddp)")
    parser.add_argument("--ddp", action="store_true", help="2-process DDP throughput vs one process")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of --ddp runs")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--estimators", action="store_true", help="the ||J||_F^2 estimators side by side")
    bench_estimators.add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.estimators:
        bench_estimators.run(args)
        return
    if args.ddp_worker:
        ddp_worker(args)
        return
    if args.ddp:
        ddp_benchmark(args)
        return
    if args.epoch:
        epoch_benchmark(args)
        return

    (x_train, y_train), _, _, _ = load_mnist()
    x = torch.from_numpy(x_train[: args.batch])
    y = torch.from_numpy(y_train[: args.batch].argmax(axis=1))

    def variant(reg):
        return make_step(mnist_cnn(seed=0), reg)

    variants = {
        "plain cross-entropy": variant(None),
        "JR ||J||_F^2, 1 projection": variant(
            lambda xb, out, g: frobenius_norm_sq_from_logits(xb, out, n_projections=1, create_graph=True, generator=g)
        ),
        "exact ||J||_F^2": variant(lambda xb, out, g: frobenius_norm_sq_from_logits(xb, out, create_graph=True)),
        "exact ||J||_{1,1}": variant(lambda xb, out, g: l11_norm_from_logits(xb, out, create_graph=True)),
        "||J||_{1,1}, 1 row": variant(
            lambda xb, out, g: l11_norm_from_logits(xb, out, n_rows=1, create_graph=True, generator=g)
        ),
        "reference loop ||J||_{1,1}": variant(lambda xb, out, g: reference_l11(xb, out)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.repeats + 3):
        for name, step in variants.items():
            elapsed = step(x, y)
            if round_index >= 3:
                times[name].append(elapsed)

    median = {name: statistics.median(values) for name, values in times.items()}
    plain = median["plain cross-entropy"]
    ref = median["reference loop ||J||_{1,1}"]
    print(f"batch {args.batch}, {args.repeats} rounds, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print()
    print_table(median, ("training step", "ms / step", 1000.0, "plain"), plain, ref)
    print_checks(
        [
            ("1-projection JR <= 2.0x plain", median["JR ||J||_F^2, 1 projection"] / plain, 2.0),
            ("exact ||J||_{1,1} <= 0.6x reference loop", median["exact ||J||_{1,1}"] / ref, 0.6),
            ("1-row ||J||_{1,1} <= 2.2x plain", median["||J||_{1,1}, 1 row"] / plain, 2.2),
        ]
    )


if __name__ == "__main__":
    main()
