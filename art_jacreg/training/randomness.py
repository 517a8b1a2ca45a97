"""The random streams of a training run: shuffling (numpy) and estimator draws (torch), from one seed.

With an explicit seed the streams are reproducible by construction; with ``seed=None`` the seed is drawn from
numpy's and torch's *global* generators, which ART users seed (``np.random.seed``, ``torch.manual_seed``,
``art.utils.master_seed``), so a seeded ART script stays reproducible.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["training_generators"]


def training_generators(seed: int | None) -> tuple[np.random.Generator, torch.Generator]:
    """A numpy generator for shuffling and a CPU torch generator for random projections / row draws.

    :param seed: An integer ``>= 0``, or ``None`` to draw the seed from numpy's and torch's global generators
        (this advances both global generators by one draw).
    :return: ``(numpy_generator, torch_generator)``, independent streams spawned from one ``SeedSequence``.
    """
    if seed is None:
        entropy: int | list[int] = [
            int(np.random.randint(0, 2**32, dtype=np.uint64)),
            int(torch.randint(0, 2**62, (1,))),
        ]
    else:
        entropy = int(seed)
    shuffle_seq, torch_seq = np.random.SeedSequence(entropy).spawn(2)
    torch_gen = torch.Generator(device="cpu")
    torch_gen.manual_seed(int(torch_seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return np.random.default_rng(shuffle_seq), torch_gen
