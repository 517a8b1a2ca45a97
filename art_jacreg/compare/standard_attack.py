"""AutoAttack's standard version (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T and Square, each run on the points the
previous ones did not break, from torchattacks 3.5 (whose ``AutoAttack`` class hard-codes Square's 5,000 queries;
here the query budget is an argument, stated in every table).

The harness runs it after the fast pair (APGD-CE + APGD-DLR), on the points the fast pair did not break, so its
accuracy is the accuracy under the union of all six attacks: never above the fast pair's.

Cost, measured on ``mnist_cnn`` (FGSM-trained 3 epochs, l2 1.5, 24 digits left by APGD-CE, one torch thread, CPU
time): about 1.25 CPU-seconds per digit in all, of which FAB-T about 0.7, APGD-T about 0.3 and Square with 1,000
queries about 0.16 (Square's cost grows linearly with its queries: the standard 5,000 would cost about 0.8 per digit
and add roughly an hour per architecture to the full preset). The harness therefore runs Square with
:data:`DEFAULT_SQUARE_QUERIES` = 1,000 queries and says so in every table; ``--square-queries 5000`` restores the
standard budget.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from art_jacreg._art import model_mode, seeded
from art_jacreg.attacks import project

__all__ = ["STANDARD_ATTACKS", "DEFAULT_SQUARE_QUERIES", "standard_autoattack"]

#: Square's query budget in the harness (the standard version uses 5,000; see the module docstring for the cost).
DEFAULT_SQUARE_QUERIES = 1000

#: The attacks of the standard version, in the order they run.
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


def _attacks(model: Any, eps: float, norm: float, queries: int, seed: int) -> list[tuple[str, Any]]:
    import torchattacks

    name = "Linf" if norm == np.inf else "L2"
    return [
        ("apgd-ce", torchattacks.APGD(model, norm=name, eps=eps, steps=100, n_restarts=1, loss="ce", seed=seed)),
        ("apgd-t", torchattacks.APGDT(model, norm=name, eps=eps, steps=100, n_restarts=1, n_classes=10, seed=seed)),
        (
            "fab-t",
            torchattacks.FAB(
                model, norm=name, eps=eps, steps=100, n_restarts=1, multi_targeted=True, n_classes=10, seed=seed
            ),
        ),
        ("square", torchattacks.Square(model, norm=name, eps=eps, n_queries=queries, n_restarts=1, seed=seed)),
    ]


def standard_autoattack(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    eps: float,
    norm: float,
    square_queries: int = DEFAULT_SQUARE_QUERIES,
    seed: int = 0,
    batch_size: int = 250,
) -> dict[str, Any]:
    """Run the standard version on ``x`` (inputs in ``[0, 1]``, the model's raw units) and say which points survive.

    :param model: A torch model mapping ``[0, 1]`` inputs to logits (left in the mode it was in).
    :param x: Inputs ``(N, 1, 28, 28)``.
    :param y: Integer labels ``(N,)``.
    :param eps: Radius.
    :param norm: ``2.0`` or ``inf``.
    :param square_queries: Square's query budget.
    :param seed: Seed of the random starts and of Square's sampling.
    :param batch_size: Points per call.
    :return: ``{"robust": bool array (N,), "broken_by": {attack: count}, "seconds": {attack: s}}``.
    """
    import torch

    device = next(model.parameters()).device
    robust = np.zeros(len(x), dtype=bool)
    broken_by = dict.fromkeys(STANDARD_ATTACKS, 0)
    seconds = dict.fromkeys(STANDARD_ATTACKS, 0.0)
    with model_mode(model, False):
        with torch.no_grad():
            for start in range(0, len(x), 512):
                logits = model(torch.from_numpy(x[start : start + 512]).to(device))
                robust[start : start + 512] = logits.argmax(1).cpu().numpy() == y[start : start + 512]
        with seeded(seed):
            for name, attack in _attacks(model, eps, norm, square_queries, seed):
                begin = time.perf_counter()
                idx = np.flatnonzero(robust)
                for start in range(0, len(idx), batch_size):
                    part = idx[start : start + batch_size]
                    xt = torch.from_numpy(x[part]).to(device)
                    yt = torch.from_numpy(y[part].astype(np.int64)).to(device)
                    adv = project(attack(xt, yt).detach().cpu().numpy(), x[part], eps, norm, (0.0, 1.0))
                    with torch.no_grad():
                        wrong = model(torch.from_numpy(adv).to(device)).argmax(1).cpu().numpy() != y[part]
                    robust[part[wrong]] = False
                    broken_by[name] += int(wrong.sum())
                seconds[name] = time.perf_counter() - begin
    return {"robust": robust, "broken_by": broken_by, "seconds": seconds}
