"""The non-finite guard of the training loop: a fused finiteness flag and a rollback to the last good step.

:class:`RollbackGuard` keeps one copy of the module's tensors (parameters and buffers) and of the optimizer's
per-parameter state as they were after the last good step. The copy is allocated once and refreshed in place
(``torch._foreach_copy_``) after every good step; it is re-allocated only when the optimizer state changes shape
(e.g. Adam creates its moments at the first step). :func:`all_finite` checks the loss, every gradient and every
weight with one host synchronisation.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

__all__ = ["RollbackGuard", "all_finite"]


def all_finite(loss: torch.Tensor, grads: list[torch.Tensor], params: list[torch.Tensor]) -> bool:
    """Whether the loss, all gradients and all parameters are finite, with one host synchronisation.

    Fast path: the 2-norms of all tensors in one fused call (``torch._foreach_norm``) and one finiteness flag; a norm
    is NaN or inf when its tensor holds a NaN or an inf. A 2-norm can also overflow for huge finite values, so a
    non-finite flag is confirmed element-wise before it is believed (only on that rare path).

    :param loss: The scalar loss.
    :param grads: Gradient tensors.
    :param params: Parameter tensors.
    :return: ``True`` if every value is finite.
    """
    tensors = [t.detach() for t in (*grads, *params) if t.is_floating_point()]
    values = [loss.detach().reshape(1).float()]
    if tensors:
        norms = torch._foreach_norm(tensors)
        values.append(torch.stack([n.to(device=loss.device, dtype=torch.float32) for n in norms]))
    if bool(torch.isfinite(torch.cat(values)).all()):
        return True
    return bool(torch.isfinite(loss.detach()).all()) and all(bool(torch.isfinite(t).all()) for t in tensors)


class RollbackGuard:
    """The last good weights and optimizer state of a training run, restorable after a bad step.

    :param module: The trained module (all its parameters and buffers are guarded).
    :param optimizer: Its optimizer (its per-parameter state is guarded).
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._live = [t for t in module.state_dict(keep_vars=True).values() if isinstance(t, torch.Tensor)]
        self._saved = [t.detach().clone() for t in self._live]
        #: The optimizer's parameters (the weights checked for finiteness after every step).
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        self._layout: list[tuple[Any, ...]] = []
        self._state_params: list[torch.Tensor] = []
        self._state_live: list[torch.Tensor] = []
        self._state_saved: list[torch.Tensor] = []
        self._state_other: dict[Any, dict[str, Any]] = {}
        self._save_state(reallocate=True)

    def commit(self) -> None:
        """Record the current weights and optimizer state as the last good ones (in place, no allocation)."""
        with torch.no_grad():
            torch._foreach_copy_(self._saved, [t.detach() for t in self._live])
        self._save_state(reallocate=False)

    def restore(self) -> None:
        """Write the last good weights and optimizer state back into the live module and optimizer; clear grads."""
        with torch.no_grad():
            for live, saved in zip(self._live, self._saved, strict=True):
                live.copy_(saved)
        state: dict[Any, dict[str, Any]] = {param: dict(other) for param, other in self._state_other.items()}
        for param, (_, key, *_), saved in zip(self._state_params, self._layout, self._state_saved, strict=True):
            state.setdefault(param, {})[key] = saved.clone()
        self.optimizer.state.clear()
        self.optimizer.state.update(state)
        self.optimizer.zero_grad(set_to_none=True)

    def _save_state(self, reallocate: bool) -> None:
        """Copy the optimizer's per-parameter state into the saved buffers (re-allocated if its layout changed)."""
        layout: list[tuple[Any, ...]] = []
        params: list[torch.Tensor] = []
        live: list[torch.Tensor] = []
        other: dict[Any, dict[str, Any]] = {}
        for param, state in self.optimizer.state.items():
            other[param] = {}
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    layout.append((id(param), key, value.shape, value.dtype, value.device))
                    params.append(param)
                    live.append(value.detach())
                else:
                    other[param][key] = copy.deepcopy(value)
        self._state_other = other
        if reallocate or layout != self._layout:
            self._layout = layout
            self._state_params = params
            self._state_live = live
            self._state_saved = [t.clone() for t in live]
            return
        self._state_live = live
        if live:
            with torch.no_grad():
                torch._foreach_copy_(self._state_saved, live)
