"""Regression check that certificates do not change: radii and bounds on fixed models and digits.

Computes, for a fixed set of small seeded models (an MNIST-like CNN, an MLP, a CNN with MaxPool, a CNN with
BatchNorm after a ReLU and AvgPool) and 20 fixed embedded MNIST digits, for every method (``"lipschitz"``,
``"interval"``, ``"linear"``), both norms and ``clip_values`` on and off: certified radii, logit bounds, certified
loss bounds and ``certify_at`` at a fixed eps, plus the layer operator norms and the global Lipschitz bound.

Usage::

    python benchmarks/check_radii_fixed.py --save before.npz     # on the reference code
    python benchmarks/check_radii_fixed.py --compare before.npz  # on the changed code

``--compare`` prints, per array, whether it is bit-identical, else the largest absolute and relative difference, and
exits with status 1 if anything differs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn

from art_jacreg.certify import (
    build_network,
    certified_loss_bound,
    certified_radius,
    certify_at,
    global_lipschitz_bound,
    layer_operator_norms,
    logit_bounds,
)
from art_jacreg.data import load_mnist

PRE = (0.1307, 0.3081)
EPS = {2.0: 0.3, np.inf: 0.01}


def _models() -> dict[str, nn.Module]:
    """Small seeded models covering every operation kind (weights scaled so that ReLUs are mixed)."""
    out: dict[str, nn.Module] = {}
    torch.manual_seed(0)
    out["cnn"] = nn.Sequential(
        nn.Conv2d(1, 4, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    torch.manual_seed(1)
    out["mlp"] = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    torch.manual_seed(2)
    out["maxpool"] = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 10),
    )
    torch.manual_seed(3)
    bn_avg = nn.Sequential(
        nn.Conv2d(1, 4, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(4),
        nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 7 * 7, 16),
        nn.ReLU(),
        nn.BatchNorm1d(16),
        nn.Linear(16, 10),
    )
    gen = torch.Generator().manual_seed(4)
    for mod in bn_avg.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            mod.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    out["bn_avgpool"] = bn_avg
    return out


def fixed_digits(n_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n_digits`` test digits of :func:`~art_jacreg.data.load_mnist` (seed 0) and their labels."""
    _, (x_test, y_test), _, _ = load_mnist(seed=0)
    return np.asarray(x_test[:n_digits], dtype=np.float32), np.asarray(y_test[:n_digits]).argmax(1)


def compute(digits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """All the quantities, keyed ``model/quantity/method/norm/clip``."""
    torch.set_num_threads(1)
    x, y = torch.as_tensor(digits), labels
    out: dict[str, np.ndarray] = {"digits": digits, "labels": labels}
    for name, model in _models().items():
        model.eval()
        net = build_network(model, (1, 28, 28), PRE)
        with torch.no_grad():
            pred = net(x).argmax(1)
        out[f"{name}/pred"] = pred.numpy()
        for norm_name, norm in (("l2", 2.0), ("linf", np.inf)):
            out[f"{name}/layer_norms/{norm_name}"] = np.asarray(layer_operator_norms(net, norm))
            out[f"{name}/global_lipschitz/{norm_name}"] = np.asarray(global_lipschitz_bound(net, norm))
            for method in ("lipschitz", "interval", "linear"):
                for clip_name, clip in (("clip", (0.0, 1.0)), ("noclip", None)):
                    key = f"{name}/{{}}/{method}/{norm_name}/{clip_name}"
                    t0 = time.perf_counter()
                    eps = EPS[norm]
                    out[key.format("radius")] = certified_radius(net, x, pred, norm, clip, method).numpy()
                    lo, hi = logit_bounds(net, x, eps, norm, clip, method)
                    out[key.format("logit_lower")], out[key.format("logit_upper")] = lo.numpy(), hi.numpy()
                    out[key.format("loss_bound")] = certified_loss_bound(net, x, y, eps, norm, clip, method).numpy()
                    out[key.format("certified")] = certify_at(net, x, pred, eps, norm, clip, method).numpy()
                    print(f"{key.format('*')}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return out


def compare(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> bool:
    """Print a line per differing array and a summary; ``True`` when all are bit-identical."""
    same = True
    worst_abs, worst_rel = 0.0, 0.0
    if set(before) != set(after):
        only_before, only_after = sorted(set(before) - set(after)), sorted(set(after) - set(before))
        print(f"keys differ: only before {only_before}, only after {only_after}")
        same = False
    for key in sorted(set(before) & set(after)):
        a, b = np.asarray(before[key]), np.asarray(after[key])
        if a.shape != b.shape or a.dtype != b.dtype:
            print(f"{key}: shape/dtype {a.shape} {a.dtype} -> {b.shape} {b.dtype}")
            same = False
            continue
        if a.tobytes() == b.tobytes():
            continue
        same = False
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        diff = np.where(np.isnan(diff), 0.0, diff)
        rel = diff / np.maximum(np.abs(a.astype(np.float64)), 1e-300)
        worst_abs, worst_rel = max(worst_abs, float(diff.max())), max(worst_rel, float(rel.max()))
        print(f"{key}: max abs diff {diff.max():.3e}, max rel diff {rel.max():.3e}")
    n = len(set(before) & set(after))
    if same:
        print(f"all {n} arrays bit-identical")
    else:
        print(f"DIFFERENCES: worst abs {worst_abs:.3e}, worst rel {worst_rel:.3e} over {n} arrays")
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", help="write the results to this .npz file")
    group.add_argument("--compare", help="compare with the results in this .npz file")
    parser.add_argument("--n-digits", type=int, default=20, help="digits used with --save")
    args = parser.parse_args()
    if args.save:
        results = compute(*fixed_digits(args.n_digits))
        folder = os.path.dirname(os.path.abspath(args.save))
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
        os.close(fd)
        np.savez(tmp, **results)
        os.replace(tmp, args.save)
        print(f"saved {len(results)} arrays to {args.save}")
        return 0
    with np.load(args.compare) as data:
        before = {k: data[k] for k in data.files}
    results = compute(before["digits"], before["labels"])  # the very digits of the reference run
    return 0 if compare(before, results) else 1


if __name__ == "__main__":
    sys.exit(main())
