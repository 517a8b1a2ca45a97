"""A cache of networks built from a torch model, reused only while the model is equal *in value* (torch only).

An entry stores a copy of every parameter and buffer and the module structure it was built from; a lookup compares
them element by element with the model's current ones, so an optimizer step, an in-place ``.data`` edit,
``load_state_dict`` or a swapped submodule all rebuild the network. Nothing is keyed on version counters or
addresses. :func:`art_jacreg._art.network_of` uses it for the certifiable network of an ART classifier.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["cached_network"]


def _model_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    params = [(f"parameter {n}", t) for n, t in model.named_parameters()]
    return params + [(f"buffer {n}", t) for n, t in model.named_buffers()]


_SETTING_TYPES = (bool, int, float, str, tuple)


def _model_structure(model: torch.nn.Module) -> tuple[tuple[Any, ...], ...]:
    """Name, type and settings of every submodule: its ``extra_repr`` (shapes, strides, paddings...) and its public
    plain-value attributes (e.g. a ``scale`` its ``forward`` reads), the train/eval flag excepted.
    """
    return tuple(
        (
            name,
            type(m),
            m.extra_repr(),
            tuple(
                (k, v)
                for k, v in sorted(vars(m).items())
                if not k.startswith("_") and k != "training" and isinstance(v, _SETTING_TYPES)
            ),
        )
        for name, m in model.named_modules()
    )


class _CachedNetwork:
    """A built network with the exact values it was built from (copies, compared by value, never by address)."""

    def __init__(self, model: torch.nn.Module, network: Any) -> None:
        self.structure = _model_structure(model)
        self.tensors = [(n, t.detach().clone()) for n, t in _model_tensors(model)]
        self.network = network

    def matches(self, model: torch.nn.Module) -> bool:
        import torch

        if _model_structure(model) != self.structure:
            return False
        current = _model_tensors(model)
        if len(current) != len(self.tensors):
            return False
        for (name, t), (stored_name, stored) in zip(current, self.tensors):
            if name != stored_name or t.dtype != stored.dtype or t.shape != stored.shape or t.device != stored.device:
                return False
            if not torch.equal(t.detach(), stored):
                return False
        return True


#: The cache of :func:`cached_network`: model -> {config: _CachedNetwork}. Weak keys, so a model that is garbage
#: collected takes its entries with it; at most ``_CONFIGS_PER_MODEL`` entries per model.
_NETWORKS: weakref.WeakKeyDictionary[Any, dict[Hashable, _CachedNetwork]] = weakref.WeakKeyDictionary()
_CONFIGS_PER_MODEL = 4


def cached_network(model: torch.nn.Module, config: Hashable, build: Callable[[], Any]) -> Any:
    """The network built for ``(model, config)``, rebuilt by ``build()`` unless the model is unchanged in value.

    :param model: The torch model the network is built from.
    :param config: Everything else the network depends on, as a hashable value (e.g. input shape, preprocessing).
    :param build: Builds the network of the model's current weights.
    :return: The cached or newly built network.
    """
    entries = _NETWORKS.setdefault(model, {})
    cached = entries.get(config)
    if cached is not None and cached.matches(model):
        return cached.network
    network = build()
    entries.pop(config, None)
    entries[config] = _CachedNetwork(model, network)
    while len(entries) > _CONFIGS_PER_MODEL:
        entries.pop(next(iter(entries)))
    return network
