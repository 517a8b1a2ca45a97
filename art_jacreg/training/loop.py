"""The one training loop of the package: epochs, batches, the non-finite guard, history, progress, scheduler.

The loop knows nothing about the loss: an *objective* maps ``(forward, x_batch, y_batch)`` to the total loss to
minimise plus named parts for the history (:class:`ObjectiveOutput`). Trainers are the ART face (argument
validation, defaults, documentation) of this loop plus an objective (:mod:`art_jacreg.training.objectives`).

Extension points for data-parallel training and resumable runs are the methods of :class:`LoopHooks` (wrap the
forward function for the run, shard the batches of an epoch, all-reduce the history sums and the finiteness flag of
every step, act at the end of every epoch); the default hooks run one process and do nothing extra. Those contracts
(:class:`ObjectiveOutput`, :class:`Objective`, :class:`LoopHooks`) are defined in
:mod:`art_jacreg.training.interfaces` and importable from here.
:mod:`art_jacreg.training.distributed` and :mod:`art_jacreg.training.checkpoint` implement them.

Cost per step beyond the objective: one host synchronisation (a single fused finiteness flag of the loss, the
gradients and the updated weights) and an in-place refresh of preallocated copies of the last good weights and
optimizer state (no allocation per step). History sums are accumulated on the device and read once per epoch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import trange

from art_jacreg._model_state import model_mode
from art_jacreg.training.guard import RollbackGuard, all_finite
from art_jacreg.training.interfaces import Batches, Forward, LoopHooks, Objective, ObjectiveOutput

__all__ = ["ObjectiveOutput", "Objective", "LoopHooks", "TrainingLoop", "accuracy"]


class TrainingLoop:
    """Run epochs of an objective over batches, with rollback to the last good step on a non-finite step.

    :param module: The module trained (its train/eval mode is set to train during the run and restored after;
        its parameters and buffers are guarded).
    :param optimizer: The optimizer over the module's parameters.
    :param objective: The objective (see :class:`Objective`).
    :param forward: Differentiable map from an input batch (on ``device``) to logits.
    :param device: Device the batches are moved to.
    :param hooks: Extension points (:class:`LoopHooks`); default one process.
    :param skip_singleton_batches: Skip batches of one sample (BatchNorm in training mode cannot normalise them),
        with one logged note per run.
    :param log: Logger of the run (the trainer's).
    :param description: Title of the progress bar and of the log lines.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: Objective,
        forward: Forward,
        device: torch.device | str,
        hooks: LoopHooks | None = None,
        skip_singleton_batches: bool = False,
        log: logging.Logger | None = None,
        description: str = "Training",
    ) -> None:
        self.module = module
        self.optimizer = optimizer
        self.objective = objective
        self.hooks = hooks if hooks is not None else LoopHooks()
        self.forward = forward
        self._run_forward: Forward = forward
        self.device = device
        self.skip_singleton_batches = skip_singleton_batches
        self.log = log if log is not None else logging.getLogger(__name__)
        self.description = description
        self._part_names: list[str] | None = None
        self._skipped_note = False

    def run(
        self,
        epoch_batches: Callable[[int], Batches],
        nb_epochs: int,
        validate: Callable[[], float] | None = None,
        scheduler: Any | None = None,
        verbose: bool = True,
        start_epoch: int = 0,
        history: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Train up to epoch ``nb_epochs`` and return the history (one record per epoch).

        :param epoch_batches: ``epoch_batches(epoch)`` gives the ``(x, y)`` numpy batches of that (1-based) epoch.
        :param nb_epochs: Number of epochs.
        :param validate: Optional function returning the validation accuracy, called after every epoch.
        :param scheduler: Optional LR scheduler stepped once after every epoch (``ReduceLROnPlateau`` gets the
            epoch's mean loss).
        :param verbose: Show a tqdm progress bar over the epochs.
        :param start_epoch: Epochs already trained (a resumed run trains epochs ``start_epoch + 1 .. nb_epochs``).
        :param history: The records of the epochs already trained (copied into the returned history).
        :return: The history: dicts with ``epoch``, ``loss``, the objective's parts, ``train_accuracy``,
            ``val_accuracy``, ``learning_rate`` and ``seconds``.
        :raises FloatingPointError: If a step gives a non-finite loss, gradient or weight; the weights and optimizer
            state of the last good step are restored first.
        """
        history = list(history or [])
        self._skipped_note = False
        show = verbose and self.hooks.is_main
        guard = RollbackGuard(self.module, self.optimizer)
        self._run_forward = self.hooks.wrap_forward(self.forward)
        try:
            with (
                model_mode(self.module, True),
                trange(
                    start_epoch + 1,
                    nb_epochs + 1,
                    desc=f"{self.description} - epochs",
                    disable=not show,
                    initial=start_epoch,
                    total=nb_epochs,
                ) as bar,
            ):
                self._epochs(bar, epoch_batches, nb_epochs, validate, scheduler, guard, history)
        finally:
            self._run_forward = self.forward
            self.hooks.finish()
        return history

    def _epochs(
        self,
        bar: Any,
        epoch_batches: Callable[[int], Batches],
        nb_epochs: int,
        validate: Callable[[], float] | None,
        scheduler: Any | None,
        guard: RollbackGuard,
        history: list[dict[str, Any]],
    ) -> None:
        """The epochs of :meth:`run`; appends their records to ``history``."""
        for epoch in bar:
            start = time.perf_counter()
            learning_rate = self.optimizer.param_groups[0].get("lr")
            stats = self._epoch(self.hooks.shard(epoch_batches(epoch), epoch), epoch, guard)
            val_acc = validate() if validate is not None else None
            if scheduler is not None:
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(stats["loss"])
                else:
                    scheduler.step()
            record = {
                "epoch": epoch,
                **stats,
                "val_accuracy": val_acc,
                "learning_rate": learning_rate,
                "seconds": time.perf_counter() - start,
            }
            history.append(record)
            self._log_epoch(record, nb_epochs)
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['train_accuracy']:.3f}")
            self.hooks.on_epoch_end(epoch, record)

    def _epoch(self, batches: Batches, epoch: int, guard: RollbackGuard) -> dict[str, Any]:
        """One pass over ``batches``; sample-weighted means of the loss, the parts and the accuracy."""
        sums: torch.Tensor | None = None
        for batch_index, (x_b, y_b) in enumerate(batches):
            if self.skip_singleton_batches and x_b.shape[0] == 1:
                if not self._skipped_note:
                    self.log.warning(
                        "A batch of 1 sample (epoch %d, batch %d) was skipped: BatchNorm layers in training mode "
                        "cannot normalise a single sample. Further such batches are skipped silently.",
                        epoch,
                        batch_index,
                    )
                    self._skipped_note = True
                continue
            row = self._step(x_b, y_b, epoch, batch_index, guard)
            sums = row if sums is None else sums + row
        if sums is None:
            raise ValueError(f"Epoch {epoch} received no training batches.")
        values = self.hooks.reduce_sums(sums).tolist()  # the one host read of the epoch's statistics
        count = values[-1]
        names = self._part_names or []
        result: dict[str, Any] = {"loss": values[0] / count}
        for i, name in enumerate(names):
            result[name] = None if math.isnan(values[1 + i]) else values[1 + i] / count
        result["train_accuracy"] = values[-2] / count
        return result

    def _step(self, x_b: np.ndarray, y_b: np.ndarray, epoch: int, batch_index: int, guard: RollbackGuard) -> Any:
        """One optimizer step; returns the history row ``[n*loss, n*parts..., correct, n]`` (float64, on device)."""
        x_t = torch.from_numpy(x_b).to(self.device)
        y_t = torch.from_numpy(y_b).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.objective(self._run_forward, x_t, y_t)
        out.loss.backward()  # the one backward of the step (DDP all-reduces the gradients here)
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.optimizer.step()
        local_ok = all_finite(out.loss, grads, guard.parameters)  # one host synchronisation per step
        if not self.hooks.all_ok(local_ok):
            self._fail(out, grads, guard, f"epoch {epoch}, batch {batch_index}", local_ok)
        guard.commit()
        n = float(x_b.shape[0])
        if self._part_names is None:
            self._part_names = list(out.parts)
        loss = out.loss.detach()
        parts = [out.parts.get(name) for name in self._part_names]
        # Device-side fills (no host-to-device copy, no synchronisation); NaN marks a part that was not computed.
        row = [loss, *(loss.new_full((), math.nan) if p is None else p.detach() for p in parts)]
        values = torch.stack(row).double() * n
        tail = torch.stack([out.correct.double(), loss.new_full((), n, dtype=torch.float64)])
        return torch.cat([values, tail])

    def _fail(
        self, out: ObjectiveOutput, grads: list[torch.Tensor], guard: RollbackGuard, where: str, local_ok: bool
    ) -> None:
        """Restore the last good state and raise a :class:`FloatingPointError` saying what went wrong where."""
        loss_ok = bool(torch.isfinite(out.loss.detach()))
        grads_ok = all_finite(out.loss.new_zeros(()), grads, [])
        guard.restore()
        if local_ok:
            raise FloatingPointError(
                f"Another process had a non-finite loss, gradient or weight at {where}; the weights before this "
                "step were kept on every process."
            )
        if not loss_ok:
            parts = ", ".join(
                f"{name.replace('_', '-')} {'n/a' if v is None else float(v)}" for name, v in out.parts.items()
            )
            advice = getattr(self.objective, "nonfinite_advice", "Lower the learning rate.")
            raise FloatingPointError(
                f"Non-finite training loss ({float(out.loss.detach())}) at {where} ({parts}); the weights before "
                f"this step were kept. {advice}"
            )
        if not grads_ok:
            raise FloatingPointError(f"Non-finite gradient at {where}; the weights before this step were kept.")
        raise FloatingPointError(
            f"The optimizer step at {where} produced NaN/inf weights (learning rate too large?); the weights "
            "before this step were restored."
        )

    def _log_epoch(self, record: dict[str, Any], nb_epochs: int) -> None:
        if not self.hooks.is_main:
            return
        parts = ", ".join(
            f"{name.replace('_', '-')} {'n/a' if record[name] is None else format(record[name], '.4g')}"
            for name in self._part_names or []
        )
        val = record["val_accuracy"]
        self.log.info(
            "epoch %d/%d: loss %.4f, %s, train acc %.4f, val acc %s, %.1f s",
            record["epoch"],
            nb_epochs,
            record["loss"],
            parts,
            record["train_accuracy"],
            "n/a" if val is None else f"{val:.4f}",
            record["seconds"],
        )


def accuracy(
    forward: Forward, module: torch.nn.Module, x: np.ndarray, y: np.ndarray, device: Any, batch_size: int = 512
) -> float:
    """Clean accuracy of ``forward`` on ``(x, y)`` with ``module`` in evaluation mode (its modes restored after).

    :param forward: Map from an input batch to logits.
    :param module: The module whose train/eval mode is switched to eval.
    :param x: Inputs (validated numpy array).
    :param y: int64 class indices.
    :param device: Device of the computation.
    :param batch_size: Batch size.
    :return: The fraction of correct predictions.
    """
    correct = 0
    with model_mode(module, False), torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            x_t = torch.from_numpy(x[start : start + batch_size]).to(device)
            pred = forward(x_t).argmax(dim=1).cpu().numpy()
            correct += int((pred == y[start : start + batch_size]).sum())
    return correct / x.shape[0]
