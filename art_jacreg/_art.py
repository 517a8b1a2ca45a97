"""Thin glue between ART's :class:`PyTorchClassifier` and the torch-only mathematics of the package.

Everything that touches ART internals lives here, tested once: the differentiable forward pass through ART's
``preprocessing`` (so Jacobians are taken w.r.t. the raw input the attacker perturbs), the checks of the model a
certificate is about, and :func:`network_of`, the one cached certifiable network of a classifier (the value-keyed
cache is :mod:`art_jacreg._network_cache`). Argument validation lives in :mod:`art_jacreg._validate` and the contexts
that leave the user's model as found in :mod:`art_jacreg._model_state`; the names re-exported here from both are
kept for compatibility.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from art_jacreg import _validate
from art_jacreg._model_state import model_mode, preserved_model_state, seeded
from art_jacreg._network_cache import cached_network

if TYPE_CHECKING:
    import torch

__all__ = [
    "check_pytorch_classifier",
    "wrapped_model",
    "classifier_arguments",
    "logits_function",
    "preprocessing_affine",
    "validate_x",
    "validate_labels",
    "validate_eps",
    "validate_norm",
    "validate_positive_int",
    "check_float32_model",
    "check_logit_count",
    "network_of",
    "preserved_model_state",
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


def wrapped_model(classifier: Any) -> torch.nn.Module:
    """The module ART runs the model in (``classifier._model``: the user's model inside ART's wrapper).

    Train/eval mode and the parameters are the user's model's; the trainers drive the optimizer through it.

    :param classifier: An ART ``PyTorchClassifier``.
    :return: The wrapper module.
    """
    return classifier._model


def classifier_arguments(classifier: Any) -> dict[str, Any]:
    """The constructor arguments of ``PyTorchClassifier`` that rebuild ``classifier`` around the same objects.

    The model, loss and optimizer are shared, not copied.

    :param classifier: An ART ``PyTorchClassifier``.
    :return: Keyword arguments for ``PyTorchClassifier.__init__`` (and subclasses with the same signature).
    """
    return {
        "model": classifier.model,
        "loss": classifier._loss,
        "input_shape": classifier.input_shape,
        "nb_classes": classifier.nb_classes,
        "optimizer": classifier._optimizer,
        "use_amp": classifier._use_amp,
        "opt_level": classifier._opt_level,
        "loss_scale": classifier._loss_scale,
        "channels_first": classifier.channels_first,
        "clip_values": classifier.clip_values,
        "preprocessing_defences": classifier.preprocessing_defences,
        "postprocessing_defences": classifier.postprocessing_defences,
        "preprocessing": classifier.preprocessing,
        "device_type": "cpu" if classifier.device.type == "cpu" else "gpu",
    }


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
    :raises TypeError: If ``x`` is not numeric.
    :raises ValueError: On a wrong shape, an empty batch, or NaN/inf values.
    """
    return _validate.validate_x(x, tuple(classifier.input_shape), name=name)


# The vocabulary lives in art_jacreg._validate; these names are kept importable from here.
validate_labels = _validate.validate_labels
validate_eps = _validate.validate_eps
validate_norm = _validate.validate_norm
validate_positive_int = _validate.validate_positive_int


def check_float32_model(classifier: Any, name: str = "classifier") -> None:
    """Check that the classifier's model computes in float32, the dtype ART feeds it.

    :param classifier: An ART ``PyTorchClassifier``.
    :param name: Argument name used in error messages.
    :raises TypeError: If a floating-point parameter or buffer is not float32 (e.g. after ``model.double()``).
    """
    import torch

    found = {
        str(t.dtype).replace("torch.", "")
        for t in (*classifier.model.parameters(), *classifier.model.buffers())
        if t.is_floating_point() and t.dtype != torch.float32
    }
    if found:
        raise TypeError(
            f"`{name}` wraps a model with {', '.join(sorted(found))} parameters, but ART's PyTorchClassifier feeds "
            "it float32 inputs; convert it with `model.float()` (certificates are computed in float64 anyway)."
        )


def check_logit_count(classifier: Any, num_logits: int, name: str = "classifier") -> None:
    """Check that the model outputs as many logits as the classifier's ``nb_classes``.

    :param classifier: An ART ``PyTorchClassifier``.
    :param num_logits: Number of logits the model outputs.
    :param name: Argument name used in error messages.
    :raises ValueError: If they differ.
    """
    if int(num_logits) != int(classifier.nb_classes):
        raise ValueError(
            f"`{name}` declares nb_classes={classifier.nb_classes} but its model outputs {num_logits} logits; "
            "pass the model's number of outputs as nb_classes (or fix the model's last layer)."
        )


def network_of(classifier: Any) -> Any:
    """The certifiable network of the classifier's current model and preprocessing, cached on the weights' values.

    The network is built by :func:`art_jacreg.certify.build_network` (a float64 copy of the model in evaluation mode,
    preprocessing folded in as the first operation; the model's modes are restored). It is reused only while the
    model is *equal in value* to the one it was built from: every parameter and buffer is compared, element by
    element, with a copy stored at build time, and the module structure (names, types, ``extra_repr`` and public
    plain-value attributes of all submodules), ``input_shape`` and the preprocessing values must match too. Any
    change (an optimizer step, an in-place ``.data`` edit, ``load_state_dict``, a swapped submodule, a new stride)
    rebuilds it, so certificates always follow the current weights, and so do the caches the certifiers store on the
    network object (it holds float64 copies, never the model's tensors). The cache costs one copy of the model's
    tensors; it lives in :mod:`art_jacreg._network_cache` (weak references to the models). Not detected: a
    ``forward`` replaced on the instance or reading non-plain attributes.

    :param classifier: An ART ``PyTorchClassifier``.
    :return: A :class:`~art_jacreg.certify.PiecewiseLinearNetwork`.
    :raises TypeError: If ``classifier`` is not a ``PyTorchClassifier``.
    :raises UnsupportedOperationError: If the model contains an operation the certifiers do not support.
    """
    import art_jacreg.certify as certify

    affine = preprocessing_affine(classifier)  # also checks the classifier
    model = classifier.model
    config = (
        tuple(int(s) for s in classifier.input_shape),
        None if affine is None else tuple((a.dtype.str, a.shape, a.tobytes()) for a in affine),
    )

    def build() -> Any:
        with model_mode(model, False):
            return certify.build_network(model, config[0], preprocessing=affine)

    return cached_network(model, config, build)
