"""Reference MNIST models and a one-line way to wrap them in an ART :class:`PyTorchClassifier`.

The models are plain :class:`torch.nn.Sequential` stacks of layers that the certifiers support (Conv2d, ReLU,
Flatten, Linear), so every tool of the package works on them out of the box.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from art.estimators.classification import PyTorchClassifier

__all__ = ["mnist_cnn", "mnist_maxpool_cnn", "mnist_mlp", "make_classifier"]


def mnist_cnn(seed: int | None = 0) -> torch.nn.Sequential:
    """A small MNIST CNN (the "small" model of Wong & Kolter 2018): two strided 4x4 convolutions, two linear layers.

    :param seed: Seed for the weight initialisation (``None`` keeps torch's global generator state).
    :return: An ``nn.Sequential`` mapping ``(B, 1, 28, 28)`` inputs to ``(B, 10)`` logits.
    """
    import torch
    from torch import nn

    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def mnist_maxpool_cnn(seed: int | None = 0) -> torch.nn.Sequential:
    """A small MNIST CNN with max-pooling: two 5x5 convolutions, each followed by ReLU and 2x2 max-pooling, then two
    linear layers (conv 1->16, pool, conv 16->32, pool, linear 512->100, linear 100->10).

    A second architecture for comparisons: max-pooling makes global Lipschitz bounds loose and changes how robust
    plain training is, at a training cost within about 3x of :func:`mnist_cnn`.

    :param seed: Seed for the weight initialisation (``None`` keeps torch's global generator state).
    :return: An ``nn.Sequential`` mapping ``(B, 1, 28, 28)`` inputs to ``(B, 10)`` logits.
    """
    import torch
    from torch import nn

    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def mnist_mlp(seed: int | None = 0, hidden: int = 128) -> torch.nn.Sequential:
    """A two-hidden-layer ReLU MLP for MNIST.

    :param seed: Seed for the weight initialisation (``None`` keeps torch's global generator state).
    :param hidden: Width of the hidden layers.
    :return: An ``nn.Sequential`` mapping ``(B, 1, 28, 28)`` inputs to ``(B, 10)`` logits.
    """
    import torch
    from torch import nn

    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def make_classifier(
    model: torch.nn.Module,
    lr: float = 1e-3,
    preprocessing: tuple[float, float] = (0.0, 1.0),
    optimizer: torch.optim.Optimizer | None = None,
    input_shape: tuple[int, ...] = (1, 28, 28),
    nb_classes: int = 10,
    device_type: str = "gpu",
) -> PyTorchClassifier:
    """Wrap a model in an ART :class:`~art.estimators.classification.PyTorchClassifier` set up for MNIST.

    Cross-entropy loss, Adam (unless ``optimizer`` is given), ``clip_values=(0, 1)``; the device is chosen as ART
    chooses it (``device_type="gpu"`` uses the current CUDA device when one is available, else the CPU).

    :param model: The torch model mapping raw inputs in ``[0, 1]`` (after ``preprocessing``) to logits.
    :param lr: Learning rate of the default Adam optimizer.
    :param preprocessing: ART's ``(mean, std)`` normalisation applied inside the classifier.
    :param optimizer: An optimizer over ``model.parameters()``; default ``Adam(lr=lr)``.
    :param input_shape: Shape of one input without the batch dimension.
    :param nb_classes: Number of classes.
    :param device_type: ``"gpu"`` (ART's default: CUDA when available, else CPU) or ``"cpu"``.
    :return: The ART classifier.
    :raises ValueError: If ``device_type`` is neither ``"gpu"`` nor ``"cpu"``.
    """
    import torch
    from art.estimators.classification import PyTorchClassifier

    if device_type not in ("gpu", "cpu"):
        raise ValueError(f"`device_type` must be 'gpu' or 'cpu', got {device_type!r}.")
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=input_shape,
        nb_classes=nb_classes,
        optimizer=optimizer,
        clip_values=(0.0, 1.0),
        preprocessing=preprocessing,
        device_type=device_type,
    )
