"""Saving and loading trained models as ``state_dict`` files (what ``art-jacreg train`` writes).

Files are written atomically (:mod:`art_jacreg._io`) and read with ``torch.load(weights_only=True)``, so loading a
file never runs code from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from art.estimators.classification import PyTorchClassifier

from art_jacreg._io import atomic_torch_save
from art_jacreg.models import make_classifier, mnist_cnn

__all__ = ["save_state_dict", "load_state_dict", "load_classifier"]


def save_state_dict(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Save ``model.state_dict()`` into ``path`` atomically (an existing file is replaced only once complete).

    :param model: The trained model.
    :param path: The output file.
    :return: ``path`` as a :class:`~pathlib.Path`.
    """
    atomic_torch_save(model.state_dict(), path)
    return Path(path)


def load_state_dict(path: str | os.PathLike, what: str = "`path`") -> dict[str, torch.Tensor]:
    """Read a ``state_dict`` saved with :func:`save_state_dict` (or ``torch.save``), on the CPU.

    :param path: The file.
    :param what: Name of the argument or option in error messages.
    :return: The state dict.
    :raises FileNotFoundError: If ``path`` is not a file.
    :raises ValueError: If the file is not a torch file holding a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - zip, pickle, EOF and unsafe-global errors all mean "not a state_dict"
        lines = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {lines[0].split('. ')[0][:160]}" if lines else type(err).__name__
        raise ValueError(f"{what}: cannot read {path} as a torch state_dict ({reason})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{what}: {path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_classifier(
    path: str | os.PathLike,
    architecture: Callable[[], torch.nn.Module] = mnist_cnn,
    what: str = "`path`",
) -> PyTorchClassifier:
    """Load a saved ``state_dict`` into a fresh model and wrap it as the package's standard classifier.

    :param path: The file written by :func:`save_state_dict` (``art-jacreg train``).
    :param architecture: Builds the untrained model the weights belong to (default
        :func:`~art_jacreg.models.mnist_cnn`).
    :param what: Name of the argument or option in error messages.
    :return: A :class:`PyTorchClassifier` (see :func:`~art_jacreg.models.make_classifier`) in evaluation mode.
    :raises FileNotFoundError: If ``path`` is not a file.
    :raises ValueError: If it is not a state_dict of that architecture.
    """
    state = load_state_dict(path, what)
    model = architecture()
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        name = getattr(architecture, "__name__", "the architecture's")
        raise ValueError(f"{what}: {path} is not a {name} state_dict: {first}") from None
    model.eval()
    return make_classifier(model)
