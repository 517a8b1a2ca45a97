"""Side-by-side speed of a certified-training step: this tree's ``CertifiedMargins`` against another tree's.

One step is what :class:`~art_jacreg.training.certified_objective.CertifiedObjective` does per batch, without the
optimizer: the model's forward, ``margin_lower`` with those logits, the certified cross-entropy and the backward pass.
``mnist_cnn``, batch 128, one torch thread, 50 steps per setting after 3 warm-up steps; each tree runs in its own
process, alternately, ``--repeats`` times, and the best median per step is kept. Times are the process's CPU time
(one thread), which other processes on a shared machine disturb far less than wall time.

Usage::

    python benchmarks/bench_margins.py --old /path/to/reference/tree   # prints a table with new/old ratios
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = [  # name, norm, bound, depth, crown
    ("global l2", 2.0, "global", 1, False),
    ("local l2 depth 1", 2.0, "local", 1, False),
    ("global linf (IBP)", float("inf"), "global", 1, False),
    ("local linf", float("inf"), "local", 1, False),
    ("local linf crown", float("inf"), "local", 1, True),
]


def _measure(steps: int, only: str) -> dict[str, float]:
    """Median seconds per step of every case, in this process (whatever ``art_jacreg`` it imports)."""
    import torch

    from art_jacreg.certify.objectives import CertifiedMargins, certified_cross_entropy
    from art_jacreg.models import mnist_cnn

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((128, 1, 28, 28), generator=gen)
    y = torch.randint(0, 10, (128,), generator=gen)
    out = {}
    for name, norm, bound, depth, crown in CASES:
        if only not in name:
            continue
        model = mnist_cnn(0)
        cm = CertifiedMargins(model, (1, 28, 28), (0.1307, 0.3081), (0.0, 1.0))
        eps = 0.3 if norm == 2 else 0.1
        times = []
        for i in range(steps + 3):
            start = time.process_time()
            logits = model((x - 0.1307) / 0.3081)
            _, low = cm.margin_lower(x, y, eps, norm, bound, 1, depth, crown, logits)
            loss = certified_cross_entropy(logits, low, y, 0.5)
            model.zero_grad()
            loss.backward()
            if i >= 3:
                times.append(time.process_time() - start)
        times.sort()
        out[name] = times[len(times) // 2]
    return out


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", help="root of the reference tree (its art_jacreg is imported in a subprocess)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default="", help="run only the settings whose name contains this text")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.steps, args.only)))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"new": here} if args.old is None else {"old": os.path.abspath(args.old), "new": here}
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for label, root in trees.items():
            env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--steps", str(args.steps)]
            cmd += ["--only", args.only]
            res = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
            best[label] = {k: min(v, best.get(label, {}).get(k, v)) for k, v in res.items()}
    header = "| setting | " + " | ".join(f"{t} ms/step" for t in trees) + (" | new/old |" if "old" in trees else " |")
    print(header)
    print("|---" * (len(trees) + 1 + ("old" in trees)) + "|")
    for name, *_ in CASES:
        if args.only not in name:
            continue
        cells = [f"{1000 * best[t][name]:.1f}" for t in trees]
        ratio = [f"{best['new'][name] / best['old'][name]:.3f}"] if "old" in trees else []
        print("| " + " | ".join([name, *cells, *ratio]) + " |")


if __name__ == "__main__":
    main()
