"""Regression check of the certified-training bounds: ``CertifiedMargins.margin_lower`` values and gradients on fixed
seeded models, for every bound, norm, ``crown`` and ``depth`` setting, with preprocessing and clip values.

Usage::

    python benchmarks/check_margins_fixed.py --save before.npz     # on the reference code
    python benchmarks/check_margins_fixed.py --compare before.npz  # on the changed code

``--compare`` prints, per array, the largest relative difference (to the array's largest magnitude) and whether the
new bound is tighter (larger) where it differs; it exits with status 1 if a difference exceeds ``--rtol`` and is not
a tightening (or the gradient of one).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

import numpy as np
import torch
from torch import nn

from art_jacreg.certify.objectives import CertifiedMargins
from art_jacreg.models import mnist_cnn

PRE = (0.4, 0.3)


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(96, 12), nn.ReLU(), nn.Linear(12, 5),
    )  # fmt: skip
    torch.manual_seed(1)
    pool = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(96, 5),
    )  # fmt: skip
    torch.manual_seed(2)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5))
    return {"conv": (conv, (1, 8, 8)), "pool": (pool, (1, 8, 8)), "mlp": (mlp, (1, 8, 8)),
            "mnist_cnn": (mnist_cnn(3), (1, 28, 28))}  # fmt: skip


def _cases(name: str) -> list[tuple[str, float, str, int | None, bool]]:
    out = []
    for norm in (2.0, math.inf):
        for bound in ("global", "local"):
            if norm == 2.0 and bound == "local":
                out += [(f"{bound}-2-d1", norm, bound, 1, False), (f"{bound}-2-dNone", norm, bound, None, False)]
            elif norm == math.inf and bound == "local" and name != "pool":
                out += [(f"{bound}-inf", norm, bound, 1, False), (f"{bound}-inf-crown", norm, bound, 1, True)]
            else:
                out.append((f"{bound}-{'2' if norm == 2 else 'inf'}", norm, bound, 1, False))
    return out


def record() -> dict[str, np.ndarray]:
    """Every array of the check."""
    torch.set_num_threads(1)
    res: dict[str, np.ndarray] = {}
    for dtype in (torch.float32, torch.float64):
        for name, (model0, shape) in _models().items():
            for pre, clip in ((PRE, (0.0, 1.0)), (None, None)):
                model = model0.to(dtype)
                gen = torch.Generator().manual_seed(5)
                x = torch.rand((6, *shape), generator=gen, dtype=dtype)
                y = torch.randint(0, 5, (6,), generator=gen)
                tag = f"{name}-{str(dtype)[6:]}-{'pre' if pre else 'raw'}"
                for case, norm, bound, depth, crown in _cases(name):
                    eps = 0.3 if norm == 2 else 0.02
                    if name == "mnist_cnn":
                        eps = 0.5 if norm == 2 else 0.01
                    cm = CertifiedMargins(model, shape, pre, clip, seed=3)
                    for n_iter in (1, 20):
                        _, low = cm.margin_lower(x, y, eps, norm, bound, n_iter=n_iter, depth=depth, crown=crown)
                        key = f"{tag}-{case}-it{n_iter}"
                        res[key] = low.detach().numpy().astype(np.float64)
                        if n_iter == 20:
                            grads = torch.autograd.grad(low.sum(), list(model.parameters()), allow_unused=True)
                            flat = [g.flatten() if g is not None else torch.full((p.numel(),), math.nan,
                                    dtype=dtype) for g, p in zip(grads, model.parameters())]  # fmt: skip
                            res[key + "-grad"] = torch.cat(flat).numpy().astype(np.float64)
    return res


def _save(path: str, res: dict[str, np.ndarray]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npz")
    os.close(fd)
    np.savez(tmp, **res)
    os.replace(tmp, path)


def compare(path: str, rtol: float) -> int:
    """Print the differences; return the number of arrays that got looser or changed beyond ``rtol``."""
    old = dict(np.load(path))
    new = record()
    bad, tightened = 0, set()
    for key in sorted(old):
        if key not in new:
            print(f"MISSING {key}")
            bad += 1
            continue
        a, b = old[key], new[key]
        scale = max(1e-30, float(np.nanmax(np.abs(a))))
        diff = np.abs(a - b) / scale
        rel = float(np.nanmax(diff)) if diff.size else 0.0
        nan_ok = bool(np.array_equal(np.isnan(a), np.isnan(b)))
        if rel <= rtol and nan_ok:
            continue
        if key.endswith("-grad") and key[: -len("-grad")] in tightened:
            print(f"FOLLOWS {key}: max rel diff {rel:.3g} (the gradient of a tightened bound)")
            continue
        tighter = (not key.endswith("-grad")) and bool(np.all(b >= a - rtol * scale))
        if tighter:
            tightened.add(key)
        status = "TIGHTER" if tighter else "CHANGED"
        bad += 0 if tighter else 1
        print(f"{status} {key}: max rel diff {rel:.3g}, nan pattern equal {nan_ok}")
    print(f"{len(old)} arrays compared, {bad} changed beyond rtol={rtol:g} without being tighter")
    return bad


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save")
    group.add_argument("--compare")
    parser.add_argument("--rtol", type=float, default=1e-5)
    args = parser.parse_args()
    if args.save:
        res = record()
        _save(args.save, res)
        print(f"saved {len(res)} arrays to {args.save}")
    else:
        sys.exit(1 if compare(args.compare, args.rtol) else 0)


if __name__ == "__main__":
    main()
