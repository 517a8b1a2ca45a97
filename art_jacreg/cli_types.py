"""The argparse types of the ``art-jacreg`` options: text parsed, then checked by :mod:`art_jacreg._validate`.

One vocabulary: the range checks and their messages are the library's validators; a failed check becomes an
``argparse.ArgumentTypeError``, so the command exits with code 2 and one line naming the option. No torch import, so
``--help`` is instant.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

from art_jacreg._validate import validate_norm, validate_positive_int, validate_real

__all__ = ["eps", "learning_rate", "seed", "positive_int", "nonneg_float", "norm"]

_T = TypeVar("_T")


def _checked(
    text: str, parse: Callable[[str], Any], what: str, kind: str, check: Callable[[Any], _T], own_message: bool = True
) -> _T:
    """``check(parse(text))`` with both failures as one-line argparse errors: ``"{what} must be {kind}, got ..."``
    when the text does not parse (or ``own_message`` is False), else the validator's message without backticks.
    """
    try:
        value = parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be {kind}, got {text!r}") from None
    try:
        return check(value)
    except (TypeError, ValueError) as err:
        message = str(err).replace("`", "").rstrip(".") if own_message else f"{what} must be {kind}, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def eps(text: str) -> float:
    """A radius: a finite number > 0.

    :param text: The option's text.
    :return: The radius.
    :raises argparse.ArgumentTypeError: Otherwise.
    """
    return _checked(text, float, "eps", "a number", lambda v: validate_real(v, "eps", low=0.0, open_low=True))


def learning_rate(text: str) -> float:
    """A learning rate: a finite number > 0.

    :param text: The option's text.
    :return: The learning rate.
    :raises argparse.ArgumentTypeError: Otherwise.
    """
    check = lambda v: validate_real(v, "learning rate", low=0.0, open_low=True)  # noqa: E731
    return _checked(text, float, "learning rate", "a number", check)


def seed(text: str) -> int:
    """A seed: an integer >= 0.

    :param text: The option's text.
    :return: The seed.
    :raises argparse.ArgumentTypeError: Otherwise.
    """
    check = lambda v: validate_positive_int(v, "seed", minimum=0)  # noqa: E731
    return _checked(text, int, "seeds", "integers >= 0", check, own_message=False)


def positive_int(text: str) -> int:
    """A count: an integer >= 1.

    :param text: The option's text.
    :return: The integer.
    :raises argparse.ArgumentTypeError: Otherwise.
    """
    return _checked(text, int, "value", "an integer >= 1", lambda v: validate_positive_int(v, "value"))


def nonneg_float(text: str) -> float:
    """A weight: a finite number >= 0.

    :param text: The option's text.
    :return: The number.
    :raises argparse.ArgumentTypeError: Otherwise.
    """
    return _checked(text, float, "value", "a number >= 0", lambda v: validate_real(v, "value", low=0.0))


def norm(text: str) -> float:
    """A threat norm: a spelling of 2 or inf accepted by :func:`~art_jacreg._validate.validate_norm`.

    :param text: The option's text.
    :return: ``2.0`` or ``math.inf``.
    :raises argparse.ArgumentTypeError: Otherwise.
    """
    try:
        return validate_norm(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"norm must be 2 or inf, got {text!r}") from None
