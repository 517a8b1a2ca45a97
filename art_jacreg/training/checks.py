"""Checks of a model and of its outputs before and during training (torch only, no ART).

Each check names the argument it concerns and says what to do, so a model that cannot be trained as given fails
at the boundary with a clear message instead of a raw torch traceback deep inside a training step. The trainers
use them; the reporter can use them on the same models.
"""

from __future__ import annotations

import warnings

import torch

__all__ = [
    "has_batch_norm",
    "check_float32_model",
    "check_logits",
    "looks_like_probabilities",
]


def has_batch_norm(model: torch.nn.Module) -> bool:
    """Whether ``model`` contains a BatchNorm layer (any ``_BatchNorm``: 1d/2d/3d, lazy and synchronised variants).

    In training mode such a layer needs more than one sample per batch (one value per channel cannot be normalised).

    :param model: The model.
    :return: ``True`` if at least one submodule is a BatchNorm layer.
    """
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_float32_model(model: torch.nn.Module, name: str = "classifier.model") -> None:
    """Check that every floating-point parameter and buffer of ``model`` is ``float32``.

    ART feeds ``float32`` arrays to the model; a ``double()`` (or ``half()``) model would fail inside the first
    matrix product with a dtype mismatch.

    :param model: The model.
    :param name: Name of the model in the message.
    :raises ValueError: If a floating-point tensor of the model has another dtype.
    """
    for label, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and tensor.dtype != torch.float32:
            raise ValueError(
                f"`{name}` has {str(tensor.dtype).replace('torch.', '')} weights ({label!r}); ART feeds float32 "
                "inputs, so convert the model with `model.float()` before wrapping it in the classifier."
            )


def looks_like_probabilities(outputs: torch.Tensor, atol: float = 1e-4) -> bool:
    """Whether a batch of model outputs looks like softmax probabilities (non-negative, rows summing to 1).

    :param outputs: Model outputs ``(B, K)``.
    :param atol: Tolerance on each row sum.
    :return: ``True`` if every entry is ``>= 0`` and every row sums to 1 within ``atol``.
    """
    with torch.no_grad():
        out = outputs.detach()
        if out.ndim != 2 or out.shape[1] < 2:
            return False
        return bool((out >= 0).all() and torch.allclose(out.sum(dim=1), torch.ones_like(out[:, 0]), atol=atol))


def check_logits(outputs: torch.Tensor, nb_classes: int, name: str = "classifier.model") -> None:
    """Check the outputs of one batch: shape ``(B, nb_classes)``, and warn when they look like probabilities.

    :param outputs: The model's outputs for a batch.
    :param nb_classes: The number of classes the classifier declares.
    :param name: Name of the model in the messages.
    :raises ValueError: If the outputs are not ``(B, nb_classes)``.
    """
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ValueError(f"`{name}` must return logits of shape (batch, nb_classes), got {shape}.")
    if outputs.shape[1] != nb_classes:
        raise ValueError(
            f"`{name}` returns {outputs.shape[1]} logits per sample but `classifier.nb_classes` is {nb_classes}; "
            "make the model's last layer output nb_classes values (or fix nb_classes)."
        )
    if looks_like_probabilities(outputs):
        warnings.warn(
            f"`{name}` seems to end in a Softmax (its outputs are non-negative and sum to 1 per sample): "
            "cross-entropy is then applied to probabilities, not logits, which trains poorly and distorts the "
            "Jacobian. Remove the final Softmax (the loss applies log-softmax itself).",
            UserWarning,
            stacklevel=3,
        )
