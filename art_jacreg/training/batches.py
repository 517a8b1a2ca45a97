"""Where the batches of an epoch come from: shuffled arrays, or an ART ``DataGenerator``, validated on the way.

Each source is a callable ``epoch_batches(epoch)`` returning that epoch's ``(x, y)`` numpy batches (labels as int64
indices), as :meth:`art_jacreg.training.loop.TrainingLoop.run` takes them.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from art_jacreg import _art
from art_jacreg._validate import check_clip_range

__all__ = ["array_batches", "generator_batches", "check_validation_data", "warn_outside_clip_once"]

EpochBatches = Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]]


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator) -> EpochBatches:
    """Batches of ``batch_size`` from a fresh permutation (drawn from ``rng``) every epoch; the last may be smaller.

    :param x: Validated inputs.
    :param y: Validated int64 labels.
    :param batch_size: Batch size.
    :param rng: The shuffling generator.
    :return: ``epoch_batches(epoch)``.
    """

    def epoch_batches(epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = rng.permutation(x.shape[0])
        for start in range(0, order.shape[0], batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

    return epoch_batches


def generator_batches(generator: Any, classifier: Any) -> EpochBatches:
    """``ceil(generator.size / generator.batch_size)`` batches of an ART ``DataGenerator`` per epoch, validated.

    :param generator: An ART ``DataGenerator`` (checked by the caller).
    :param classifier: The classifier the batches are for (input shape, classes, clip values).
    :return: ``epoch_batches(epoch)``.
    :raises ValueError: If ``generator.size`` or ``generator.batch_size`` is not a positive integer, or a batch is
        malformed (raised when the batch is drawn).
    """
    size, gen_batch = generator.size, generator.batch_size
    if size is None or isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"`generator.size` must be a positive integer, got {size!r}.")
    gen_batch = _art.validate_positive_int(gen_batch, "generator.batch_size")
    nb_batches = math.ceil(int(size) / gen_batch)
    clip_check = warn_outside_clip_once(classifier.clip_values, "generator batch x")

    def epoch_batches(epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for _ in range(nb_batches):
            batch = generator.get_batch()
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError("`generator.get_batch()` must return a tuple (x_batch, y_batch).")
            x_b = _art.validate_x(_to_numpy(batch[0]), classifier, name="generator batch x")
            y_b = _art.validate_labels(
                _to_numpy(batch[1]), x_b.shape[0], classifier.nb_classes, name="generator batch y"
            )
            clip_check(x_b)
            yield x_b, y_b

    return epoch_batches


def warn_outside_clip_once(clip_values: Any, name: str) -> Callable[[np.ndarray], None]:
    """A checker that warns (once) when a batch lies outside ``clip_values``, then stops checking.

    :param clip_values: The classifier's ``clip_values`` (or ``None``).
    :param name: Argument name used in the warning.
    :return: ``check(x_batch)``.
    """
    done = clip_values is None

    def check(x: np.ndarray) -> None:
        nonlocal done
        if done:
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_clip_range(x, clip_values, name, error=False)
        if caught:
            done = True
            warnings.warn(caught[0].message, UserWarning, stacklevel=2)

    return check


def check_validation_data(
    validation_data: Any, classifier: Any, batch_size: Any = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Validate ``validation_data`` (``None`` or ``(x_val, y_val)``) and return a validated copy.

    A number in its place is ART's positional ``fit(x, y, batch_size, nb_epochs)``: the error says what to write.

    :param validation_data: The argument.
    :param classifier: The classifier the data are for.
    :param batch_size: The value that arrived in ``batch_size`` (for the message about positional arguments).
    :return: ``(x_val, y_val)`` with int64 labels, or ``None``.
    """
    if validation_data is None:
        return None
    if isinstance(validation_data, numbers.Number) and not isinstance(validation_data, bool):
        suggestion = f"batch_size={validation_data!r}" + ("" if batch_size is None else f", nb_epochs={batch_size!r}")
        raise ValueError(
            f"`validation_data` got the number {validation_data!r}: the third positional argument of fit is "
            "validation_data, not batch_size (ART's AdversarialTrainer takes fit(x, y, batch_size, nb_epochs)). "
            f"Pass them by keyword: fit(x, y, {suggestion})."
        )
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError(
            "`validation_data` must be None or a tuple (x_val, y_val), got "
            f"{type(validation_data).__name__}"
            + (f" of length {len(validation_data)}" if isinstance(validation_data, (tuple, list)) else "")
            + "."
        )
    x_val = _art.validate_x(validation_data[0], classifier, name="validation_data[0]")
    y_val = _art.validate_labels(validation_data[1], x_val.shape[0], classifier.nb_classes, name="validation_data[1]")
    check_clip_range(x_val, classifier.clip_values, "validation_data[0]", error=False)
    return x_val, y_val


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value
