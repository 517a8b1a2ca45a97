"""Contexts that leave a user's model and the global random generators exactly as found (torch only, no ART).

:func:`preserved_model_state` restores train/eval modes, ``requires_grad`` flags and ``.grad`` tensors after ART's
``predict``, gradients and attacks; :func:`model_mode` sets a mode for a block and restores every submodule's;
:func:`seeded` seeds Python's, numpy's and torch's global generators for a block (ART's trainers and attacks draw from
them) and restores their states afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["preserved_model_state", "model_mode", "seeded"]


@contextlib.contextmanager
def preserved_model_state(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Leave the model exactly as found: train/eval modes, ``requires_grad`` flags and ``.grad`` of every parameter.

    ART's ``predict``, gradients and attacks switch the model to eval mode and accumulate ``.grad`` on the
    parameters; inside this context they may, and everything is restored on exit (``None`` grads become ``None``
    again, existing grads get their values back in their original tensors).

    :param model: The module.
    :return: A context manager yielding the module.
    """
    import torch

    modes = {m: m.training for m in model.modules()}
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [(p.grad, None if p.grad is None else p.grad.detach().clone()) for p in params]
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode
        for p, flag, (grad, values) in zip(params, flags, grads):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
            if grad is None or values is None:
                p.grad = None
            else:
                with torch.no_grad():
                    grad.copy_(values)
                p.grad = grad


@contextlib.contextmanager
def model_mode(module: torch.nn.Module, training: bool) -> Iterator[torch.nn.Module]:
    """Temporarily set a module's train/eval mode, restoring every submodule's previous mode afterwards.

    :param module: The module.
    :param training: ``True`` for train mode, ``False`` for eval mode.
    :return: A context manager yielding the module.
    """
    previous = {m: m.training for m in module.modules()}
    module.train(training)
    try:
        yield module
    finally:
        for m, mode in previous.items():
            m.training = mode


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python's, numpy's and torch's global generators (ART's trainers use them) and restore them afterwards.

    :param seed: The seed.
    :return: A context manager.
    """
    import random

    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
