"""One rank of the data-parallel tests (run as a script by tests/test_distributed.py, torchrun's conventions).

``python tests/ddp_worker.py SCENARIO OUT_DIR`` with ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
the environment joins a gloo process group (30 s timeout), runs the scenario and saves what the test checks into
``OUT_DIR/rank{RANK}.pt``.
"""

from __future__ import annotations

import copy
import os
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from art_jacreg.data import load_mnist
from art_jacreg.models import make_classifier, mnist_mlp
from art_jacreg.trainer import JacobianRegularizedTrainer

N_SAMPLES = 300


def data() -> tuple[np.ndarray, np.ndarray]:
    """The first digits of the embedded MNIST (inputs, class indices)."""
    (x, y), _, _, _ = load_mnist()
    return x[:N_SAMPLES], y[:N_SAMPLES].argmax(1)


def make_trainer() -> JacobianRegularizedTrainer:
    """A small MLP with SGD and the exact ``||J||_F^2`` regulariser (no random draws), seed 0."""
    model = mnist_mlp(seed=0, hidden=32)
    classifier = make_classifier(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                                 device_type="cpu")  # fmt: skip
    return JacobianRegularizedTrainer(classifier, norm=2, reg_weight=0.05, n_projections=None, seed=0, verbose=False)


def weights(trainer: JacobianRegularizedTrainer) -> dict[str, torch.Tensor]:
    """A copy of the trained weights."""
    return {k: v.detach().clone() for k, v in trainer.get_classifier().model.state_dict().items()}


def train_scenario(out_dir: Path, rank: int) -> dict:
    """One step, two epochs, a checkpointed resume, and the model left plain afterwards."""
    x, y = data()
    result: dict = {}
    one_step = make_trainer()
    one_step.fit(x[:64], y[:64], batch_size=32, nb_epochs=1)
    result["one_step"] = weights(one_step)
    epochs = make_trainer()
    model = epochs.get_classifier().model
    epochs.fit(x, y, batch_size=32, nb_epochs=2)
    result["epochs"] = weights(epochs)
    result["history"] = [{k: v for k, v in h.items() if k != "seconds"} for h in epochs.history]
    # The model is a plain module again: same object, no hooks, and a backward on this rank alone gives this rank's
    # own gradient (a lingering DDP reducer would average it with the other rank's).
    result["same_object"] = epochs.get_classifier().model is model
    result["hooks"] = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                          for m in model.modules())  # fmt: skip
    reference = copy.deepcopy(model)
    xb = torch.from_numpy(x[rank * 8 : rank * 8 + 8])
    for net in (model, reference):
        net.zero_grad()
        net(xb).pow(2).sum().backward()
    result["grads_local"] = all(torch.equal(p.grad, q.grad) for p, q in zip(model.parameters(), reference.parameters()))
    # Checkpointed: 2 epochs, then a new trainer resumes to 3; the reference trains 3 epochs uninterrupted.
    ckpt = out_dir / "ddp.ckpt"
    make_trainer().fit(x, y, batch_size=32, nb_epochs=2, checkpoint=ckpt)
    resumed = make_trainer()
    resumed.fit(x, y, batch_size=32, nb_epochs=3, checkpoint=ckpt)
    straight = make_trainer()
    straight.fit(x, y, batch_size=32, nb_epochs=3)
    result["resumed"], result["straight"] = weights(resumed), weights(straight)
    result["resumed_epochs"] = [h["epoch"] for h in resumed.history]
    result.update(nonfinite_on_one_rank(rank))
    return result


def nonfinite_on_one_rank(rank: int) -> dict:
    """Rank 1's loss becomes NaN at its third step while its gradients stay finite: every rank must roll back."""
    from art_jacreg.training import jr_variants as objectives  # the trainer's training objective

    original = objectives.VariantObjective.__call__
    calls = {"n": 0}

    def nan_loss(self, forward, x, y):
        out = original(self, forward, x, y)
        calls["n"] += 1
        if rank == 1 and calls["n"] == 3:
            out = out._replace(loss=out.loss + torch.tensor(float("nan")))  # a constant: the gradients are unchanged
        return out

    x, y = data()
    trainer = make_trainer()
    before = {}
    original_step = torch.optim.SGD.step

    def remember_then_step(self, *args, **kwargs):
        if calls["n"] == 3:
            before.update(weights(trainer))
        return original_step(self, *args, **kwargs)

    objectives.VariantObjective.__call__ = nan_loss
    torch.optim.SGD.step = remember_then_step
    try:
        trainer.fit(x, y, batch_size=32, nb_epochs=1)
        message = None
    except FloatingPointError as err:
        message = str(err)
    finally:
        objectives.VariantObjective.__call__ = original
        torch.optim.SGD.step = original_step
    after = weights(trainer)
    return {"nonfinite_message": message, "rolled_back": all(torch.equal(before[k], after[k]) for k in before),
            "nonfinite_weights": after}  # fmt: skip


def raise_scenario(out_dir: Path, rank: int) -> dict:
    """Rank 1 raises at its third training step; rank 0 must stop too (not wait forever)."""
    from art_jacreg.training import jr_variants as objectives  # the trainer's training objective

    original = objectives.VariantObjective.__call__
    calls = {"n": 0}

    def failing(self, forward, x, y):
        calls["n"] += 1
        if rank == 1 and calls["n"] == 3:
            raise RuntimeError("injected failure on rank 1")
        return original(self, forward, x, y)

    objectives.VariantObjective.__call__ = failing
    x, y = data()
    make_trainer().fit(x, y, batch_size=32, nb_epochs=2)
    return {"finished": True}


def main() -> None:
    scenario, out_dir = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank = dist.get_rank()
    try:
        result = {"train": train_scenario, "raise": raise_scenario}[scenario](out_dir, rank)
        torch.save(result, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
