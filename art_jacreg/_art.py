"""Thin glue between ART's :class:`PyTorchClassifier` and the torch-only mathematics of the package.

Everything that touches ART internals lives here, tested once: the differentiable forward pass through ART's
``preprocessing`` (so Jacobians are taken w.r.t. the raw input the attacker perturbs), label normalisation, and the
argument validation shared by the trainer and the reporter.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "check_pytorch_classifier",
    "logits_function",
    "preprocessing_affine",
    "validate_x",
    "validate_labels",
    "validate_eps",
    "validate_norm",
    "validate_positive_int",
    "model_mode",
    "seeded",
]


def check_pytorch_classifier(classifier: Any, name: str = "classifier") -> None:
    """Check that ``classifier`` is an ART ``PyTorchClassifier`` whose preprocessing is differentiable in torch.

    :param classifier: The object to check.
    :param name: Argument name used in error messages.
    :raises TypeError: If it is not a ``PyTorchClassifier``.
    :raises ValueError: If its preprocessing cannot be differentiated in torch or it has pre/post-processing defences.
    """
    from art.estimators.classification import PyTorchClassifier

    if not isinstance(classifier, PyTorchClassifier):
        raise TypeError(
            f"`{name}` must be an art.estimators.classification.PyTorchClassifier, got {type(classifier).__name__}."
        )
    if classifier.preprocessing_defences:
        raise ValueError(
            f"`{name}` has preprocessing_defences; Jacobians w.r.t. the raw input are not defined through them. "
            "Remove the defences or wrap them into the model."
        )
    if classifier.postprocessing_defences:
        raise ValueError(f"`{name}` has postprocessing_defences, which art-jacreg does not support.")
    if not classifier.all_framework_preprocessing:
        raise ValueError(f"`{name}` must use PyTorch preprocessing only (all_framework_preprocessing is False).")


def logits_function(classifier: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """A differentiable map from a raw input tensor to the classifier's logits, preprocessing included.

    :param classifier: An ART ``PyTorchClassifier``.
    :return: ``func(x)`` taking a tensor ``(B, *input_shape)`` on ``classifier.device`` and returning ``(B, K)`` logits.
    """
    check_pytorch_classifier(classifier)

    def func(x: torch.Tensor) -> torch.Tensor:
        x_pre, _ = classifier._apply_preprocessing(x, None, fit=False, no_grad=False)
        return classifier._model(x_pre)[-1]

    return func


def preprocessing_affine(classifier: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(mean, std)`` of the classifier's standardisation, or ``None`` when it is the identity.

    :param classifier: An ART ``PyTorchClassifier``.
    :return: ``(mean, std)`` as float32 arrays broadcastable to the input, or ``None``.
    """
    from art.preprocessing.standardisation_mean_std.pytorch import StandardisationMeanStdPyTorch

    check_pytorch_classifier(classifier)
    result = None
    for preprocessor in classifier.preprocessing_operations:
        if isinstance(preprocessor, StandardisationMeanStdPyTorch):
            if result is not None:
                raise ValueError("`classifier` has more than one standardisation step, which is not supported.")
            mean = np.asarray(preprocessor.mean, dtype=np.float32)
            std = np.asarray(preprocessor.std, dtype=np.float32)
            if not (np.all(mean == 0) and np.all(std == 1)):
                result = (mean, std)
        else:
            raise ValueError(
                f"`classifier` has an unsupported preprocessing step {type(preprocessor).__name__}; only ART's "
                "(mean, std) standardisation is supported."
            )
    return result


def validate_x(x: Any, classifier: Any, name: str = "x") -> np.ndarray:
    """Validate an input batch against the classifier's ``input_shape`` and return a float32 copy.

    :param x: Array-like of shape ``(N, *input_shape)``.
    :param classifier: The ART classifier the input is for.
    :param name: Argument name used in error messages.
    :return: A new float32 array (the caller's array is never modified).
    :raises ValueError: On a wrong shape, an empty batch, or NaN/inf values.
    """
    try:
        arr = np.array(x, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a numeric array, got {type(x).__name__}.") from err
    expected = tuple(classifier.input_shape)
    if arr.ndim != len(expected) + 1 or tuple(arr.shape[1:]) != expected:
        raise ValueError(
            f"`{name}` must have shape (N, {', '.join(str(s) for s in expected)}) to match the classifier's "
            f"input_shape, got {tuple(arr.shape)}."
        )
    if arr.shape[0] == 0:
        raise ValueError(f"`{name}` is empty; at least one sample is needed.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or inf values.")
    return arr


def validate_labels(y: Any, n_samples: int, nb_classes: int, name: str = "y") -> np.ndarray:
    """Normalise labels given as indices ``(N,)`` or one-hot / probabilities ``(N, K)`` into int64 indices.

    :param y: The labels.
    :param n_samples: Expected number of labels.
    :param nb_classes: Number of classes ``K``.
    :param name: Argument name used in error messages.
    :return: A new int64 array of shape ``(N,)``.
    :raises ValueError: On a wrong length or shape, non-integer indices, or labels outside ``[0, K)``.
    """
    try:
        arr = np.asarray(y)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be an array of labels, got {type(y).__name__}.") from err
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        if arr.shape[1] != nb_classes:
            raise ValueError(f"`{name}` is 2-D, so it must be one-hot with {nb_classes} columns, got {arr.shape}.")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"`{name}` contains NaN or inf values.")
        indices = np.argmax(arr, axis=1).astype(np.int64)
    elif arr.ndim == 1:
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise ValueError(f"`{name}` as 1-D labels must hold integer class indices.")
        elif arr.dtype.kind not in "iub":
            raise ValueError(f"`{name}` must hold integer class indices, got dtype {arr.dtype}.")
        indices = arr.astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= nb_classes):
            raise ValueError(
                f"`{name}` holds labels out of range: expected values in [0, {nb_classes - 1}], "
                f"got min {indices.min()} and max {indices.max()}."
            )
    else:
        raise ValueError(f"`{name}` must be class indices (N,) or one-hot (N, {nb_classes}), got shape {arr.shape}.")
    if indices.shape[0] != n_samples:
        raise ValueError(f"`{name}` has {indices.shape[0]} labels but there are {n_samples} samples.")
    return indices


def validate_eps(eps: Any, name: str = "eps", allow_zero: bool = True) -> float:
    """Validate a perturbation radius.

    :param eps: The radius (raw-input units).
    :param name: Argument name used in error messages.
    :param allow_zero: Whether ``0`` is accepted.
    :return: ``eps`` as a float.
    :raises ValueError: If it is not a finite number ``>= 0`` (``> 0`` when ``allow_zero`` is False).
    """
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(eps).__name__}.")
    value = float(eps)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a finite number {bound}, got {eps!r}.")
    return value


def validate_norm(norm: Any, name: str = "norm") -> float:
    """Normalise a threat-model norm to ``2.0`` or ``np.inf``.

    :param norm: ``2``, ``"2"``, ``"l2"``, ``np.inf``, ``"inf"`` or ``"linf"``.
    :param name: Argument name used in error messages.
    :return: ``2.0`` or ``np.inf``.
    :raises ValueError: For any other value.
    """
    from art_jacreg.certify._common import validate_norm as _validate_norm

    return _validate_norm(norm, name=name)


def validate_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Validate an integer argument that must be at least ``minimum``.

    :param value: The value.
    :param name: Argument name used in error messages.
    :param minimum: Smallest accepted value.
    :return: ``value`` as an int.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


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
