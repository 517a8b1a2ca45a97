"""The defence registry: what a defence is (:class:`DefenceSpec`), the adapters that train one, and the lookup.

An *adapter* is a function ``(spec, ctx, model) -> details`` that trains ``model`` in place with one trainer. It is
registered with :func:`adapter`, which stores next to it the adaptations the harness makes around ART for that
trainer and the settings it uses and why (paper values or the stated tuning budget). Both are copied into every
result row, so a reader of the table sees exactly what each defence was given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from art_jacreg._validate import norm_key

__all__ = [
    "ADAPTATIONS",
    "ADAPTERS",
    "DEFENCES",
    "SETTINGS",
    "Adapter",
    "DefenceSpec",
    "adapter",
    "get_defence",
    "list_defences",
    "register_defence",
]


@dataclass(frozen=True)
class DefenceSpec:
    """One entry of the defence registry.

    :ivar name: Registry name (used on the command line).
    :ivar trainer: Adapter key (see :data:`ADAPTERS`): ``plain``, ``fgsm``, ``madry``, ``pgd``, ``trades``, ``fbf``,
        ``awp``, ``ibp``, ``jr`` or ``certified``.
    :ivar norm: Threat model it trains against (``2.0``, ``inf``) or ``None`` (plain training).
    :ivar params: Trainer-specific parameters (e.g. ``reg_weight``, ``max_iter``, ``beta``).
    :ivar description: One line for ``--list-defences``.
    :ivar eps: Training radius of this defence; ``None`` uses the protocol's ``train_eps_l2`` / ``train_eps_linf``.
    """

    name: str
    trainer: str
    norm: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    eps: float | None = None

    def config(self) -> dict[str, Any]:
        """The fields that determine the trained model (used in the cache key).

        :return: A JSON-serialisable dict.
        """
        norm = None if self.norm is None else norm_key(self.norm)
        out: dict[str, Any] = {
            "name": self.name,
            "trainer": self.trainer,
            "norm": norm,
            "params": dict(sorted(self.params.items())),
        }
        if self.eps is not None:
            out["eps"] = float(self.eps)
        return out


@dataclass(frozen=True)
class Adapter:
    """A registered adapter.

    :ivar train: ``train(spec, ctx, model) -> details``: trains ``model`` in place, returns the settings used.
    :ivar adaptations: What the harness does around ART for this trainer (ART is never patched).
    :ivar settings: Where the trainer's settings come from (paper values or the tuning budget), one line.
    """

    train: Callable[[DefenceSpec, Any, Any], dict[str, Any]]
    adaptations: tuple[str, ...]
    settings: str


#: Adapters by trainer key.
ADAPTERS: dict[str, Adapter] = {}
#: Every adaptation the harness makes around ART 1.20.1, keyed by trainer (filled by :func:`adapter`).
ADAPTATIONS: dict[str, list[str]] = {}
#: Where each trainer's settings come from, keyed by trainer (filled by :func:`adapter`).
SETTINGS: dict[str, str] = {}
#: The registered defences, in registry order.
DEFENCES: dict[str, DefenceSpec] = {}


def adapter(key: str, adaptations: list[str], settings: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering an adapter function under ``key`` with its adaptations and settings.

    :param key: Trainer key.
    :param adaptations: What is done around ART (``["none ..."]`` when nothing).
    :param settings: Where the settings come from.
    :return: The decorator (returns the function unchanged).
    """

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        ADAPTERS[key] = Adapter(func, tuple(adaptations), settings)
        ADAPTATIONS[key] = list(adaptations)
        SETTINGS[key] = settings
        return func

    return register


def register_defence(spec: DefenceSpec) -> DefenceSpec:
    """Add a defence to :data:`DEFENCES` (replacing one of the same name).

    :param spec: The defence.
    :return: ``spec``.
    :raises ValueError: If ``spec.trainer`` has no adapter.
    """
    if spec.trainer not in ADAPTERS:
        raise ValueError(f"`spec.trainer` must be one of {sorted(ADAPTERS)}, got {spec.trainer!r}.")
    DEFENCES[spec.name] = spec
    return spec


def list_defences() -> list[str]:
    """Names of the registered defences, in registry order.

    :return: The names.
    """
    return list(DEFENCES)


def get_defence(name: str) -> DefenceSpec:
    """Look a defence up by name.

    :param name: A name from :func:`list_defences`.
    :return: The spec.
    :raises ValueError: For an unknown name (the message lists the known ones).
    """
    if name not in DEFENCES:
        raise ValueError(f"unknown defence {name!r}; known defences: {', '.join(DEFENCES)}.")
    return DEFENCES[name]
