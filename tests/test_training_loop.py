"""Tests of the one training loop (:mod:`art_jacreg.training.loop`) and its non-finite guard, independent of ART."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from art_jacreg.training.guard import RollbackGuard, all_finite
from art_jacreg.training.loop import LoopHooks, ObjectiveOutput, TrainingLoop


def _data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return x, y


def _batches(x: np.ndarray, y: np.ndarray, size: int):
    def epoch_batches(epoch: int):
        for start in range(0, len(x), size):
            yield x[start : start + size], y[start : start + size]

    return epoch_batches


class SquaredMargin:
    """A non-cross-entropy objective: squared hinge on the margin, with two named parts."""

    def __call__(self, forward, x, y):
        logits = forward(x)
        margin = logits.gather(1, y[:, None])[:, 0] - logits.gather(1, (1 - y)[:, None])[:, 0]
        hinge = torch.relu(1 - margin).pow(2).mean()
        size = logits.pow(2).mean()
        correct = (logits.argmax(1) == y).sum()
        return ObjectiveOutput(hinge + 0.01 * size, {"hinge": hinge.detach(), "size": size.detach()}, correct)


def test_any_objective_trains_and_its_parts_enter_the_history() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = _data()
    loop = TrainingLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), SquaredMargin(), model, "cpu")
    history = loop.run(_batches(x, y, 8), nb_epochs=5, verbose=False)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert set(history[0]) == {"epoch", "loss", "hinge", "size", "train_accuracy", "val_accuracy", "learning_rate",
                               "seconds"}  # fmt: skip
    for h in history:
        assert h["loss"] == pytest.approx(h["hinge"] + 0.01 * h["size"], rel=1e-6)
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["train_accuracy"] > 0.9


def test_history_means_are_sample_weighted() -> None:
    """Batches of 16, 16 and 8: the epoch mean weights each batch by its size (checked against a direct sum)."""
    model = nn.Linear(3, 2)
    x, y = _data()
    losses = []

    class Recording(SquaredMargin):
        def __call__(self, forward, x, y):
            out = super().__call__(forward, x, y)
            losses.append((float(out.loss.detach()), len(x)))
            return out

    loop = TrainingLoop(model, torch.optim.SGD(model.parameters(), lr=0.0), Recording(), model, "cpu")
    history = loop.run(_batches(x, y, 16), nb_epochs=1, verbose=False)
    expected = sum(v * n for v, n in losses) / sum(n for _, n in losses)
    assert [n for _, n in losses] == [16, 16, 8]
    assert history[0]["loss"] == pytest.approx(expected, rel=1e-6)


def test_hooks_shard_reduce_and_epoch_callback() -> None:
    model = nn.Linear(3, 2)
    x, y = _data()
    events = []

    class Hooks(LoopHooks):
        def wrap_forward(self, forward):
            events.append("wrap")
            return forward

        def shard(self, batches, epoch):
            return (b for i, b in enumerate(batches) if i % 2 == 0)  # this "rank" takes every other batch

        def reduce_sums(self, sums):
            events.append(("reduce", float(sums[-1])))  # the last entry is the sample count
            return sums

        def on_epoch_end(self, epoch, record):
            events.append(("epoch", epoch, record["epoch"]))

    loop = TrainingLoop(model, torch.optim.SGD(model.parameters(), lr=0.1), SquaredMargin(), model, "cpu", Hooks())
    loop.run(_batches(x, y, 8), nb_epochs=2, verbose=False)
    assert events == ["wrap", ("reduce", 24.0), ("epoch", 1, 1), ("reduce", 24.0), ("epoch", 2, 2)]


def test_all_finite_is_exact_about_nan_and_inf_and_never_overflows() -> None:
    loss = torch.tensor(1.0)
    big = [torch.full((4,), 3e38)]  # its 2-norm overflows float32: confirmed finite element-wise
    assert all_finite(loss, big, big)
    assert not all_finite(torch.tensor(float("nan")), big, big)
    assert not all_finite(loss, [torch.tensor([0.0, float("inf")])], big)
    assert not all_finite(loss, big, [nn.Parameter(torch.tensor([float("nan"), 1.0]))])
    assert all_finite(loss, [], [torch.zeros(3, dtype=torch.int64)])  # integer tensors are skipped


def test_guard_restores_last_good_weights_and_optimizer_state_in_place() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    guard = RollbackGuard(model, optimizer)
    x = torch.randn(8, 3)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
        guard.commit()
    saved_buffers = [id(t) for t in guard._saved]
    good = {k: v.clone() for k, v in model.state_dict().items()}
    good_state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    optimizer.zero_grad()
    model(x).pow(2).mean().backward()
    optimizer.step()
    guard.commit()
    assert [id(t) for t in guard._saved] == saved_buffers  # refreshed in place, not re-allocated
    optimizer.zero_grad()
    (model(x * float("nan")).sum()).backward()  # a bad step: NaN weights, NaN moments, NaN running stats
    optimizer.step()
    guard.restore()
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert all(p.grad is None for p in model.parameters())
    # The restored state is the one after the third (last good) step, not the first or second.
    assert not all(torch.equal(v, good[k]) for k, v in model.state_dict().items() if v.is_floating_point())
    assert all(float(s["step"]) == 3 for s in optimizer.state.values())
    assert set(good_state) == {id(p) for p in optimizer.state}


def test_nonfinite_step_names_epoch_and_batch_and_keeps_good_state() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = _data()
    x_bad = x.copy()
    x_bad[20] = np.inf  # batch 2 of epoch 2 (batches of 8) ... only in the second epoch's data
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    snapshots = {}

    def epoch_batches(epoch: int):
        data = x if epoch == 1 else x_bad
        for i, start in enumerate(range(0, len(x), 8)):
            if epoch == 2 and i == 2:
                snapshots["good"] = {k: v.clone() for k, v in model.state_dict().items()}
            yield data[start : start + 8], y[start : start + 8]

    loop = TrainingLoop(model, optimizer, SquaredMargin(), model, "cpu")
    with pytest.raises(FloatingPointError, match="epoch 2, batch 2"):
        loop.run(epoch_batches, nb_epochs=3, verbose=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots["good"][k])
    assert all(int(s["step"]) == 5 + 2 for s in optimizer.state.values())  # 5 steps in epoch 1, 2 in epoch 2
