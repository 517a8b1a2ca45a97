"""One rank of the data-parallel estimator test (run as a script by tests/test_estimator_option.py).

``python tests/ddp_estimator_worker.py OUT_DIR ESTIMATOR...`` with torchrun's environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``) joins a gloo group and, for each estimator, trains one SGD step (batch 32 per rank),
recording the rank's batch and random directions; then, outside DDP, it recomputes this rank's own gradient of the
same objective with the same directions. Saves ``{estimator: results}`` to ``OUT_DIR/rank{RANK}.pt``.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from art_jacreg import forward_norms
from art_jacreg.data import load_mnist
from art_jacreg.models import make_classifier, mnist_mlp
from art_jacreg.trainer import JacobianRegularizedTrainer
from art_jacreg.training import jr_variants

LR, WEIGHT = 0.05, 0.05


def one_step(estimator: str) -> dict:
    """One DDP step with ``estimator`` and this rank's own gradient of it (see the module docstring)."""
    (x, y), _, _, _ = load_mnist()
    x, y = x[:64], y[:64].argmax(1)
    model = mnist_mlp(seed=0, hidden=32)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    clf = make_classifier(model, optimizer=torch.optim.SGD(model.parameters(), lr=LR), device_type="cpu")
    trainer = JacobianRegularizedTrainer(clf, reg_weight=WEIGHT, seed=0, verbose=False, jacobian_estimator=estimator)
    seen: dict = {"batches": [], "directions": []}
    draw, call = forward_norms.random_unit_directions, jr_variants.VariantObjective.__call__

    def recording_draw(*args, **kwargs):
        seen["directions"].append(draw(*args, **kwargs))
        return seen["directions"][-1]

    def recording_call(self, forward, xb, yb):
        seen["batches"].append((xb.detach().clone(), yb.detach().clone()))
        return call(self, forward, xb, yb)

    forward_norms.random_unit_directions = recording_draw
    jr_variants.VariantObjective.__call__ = recording_call
    try:
        trainer.fit(x, y, batch_size=32, nb_epochs=1)
    finally:
        forward_norms.random_unit_directions, jr_variants.VariantObjective.__call__ = draw, call
    # This rank's own gradient of the same objective, same batch and directions, without DDP.
    ((xb, yb),), (directions,) = seen["batches"], seen["directions"]
    forward_norms.random_unit_directions = lambda *args, **kwargs: directions
    local = mnist_mlp(seed=0, hidden=32)
    local.load_state_dict(initial)
    objective = jr_variants.VariantObjective(2.0, WEIGHT, 1, None, torch.Generator(), jacobian_estimator=estimator)
    objective(local, xb, yb).loss.backward()
    plain = mnist_mlp(seed=0, hidden=32)
    plain.load_state_dict(initial)
    torch.nn.functional.cross_entropy(plain(xb), yb).backward()
    forward_norms.random_unit_directions = draw
    return {
        "initial": initial,
        "final": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "local_grads": {name: p.grad.clone() for name, p in local.named_parameters()},
        "ce_grads": {name: p.grad.clone() for name, p in plain.named_parameters()},
        "regularizer": trainer.history[0]["regularizer"],
    }


def main() -> None:
    out_dir, estimators = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank = dist.get_rank()
    try:
        torch.save({estimator: one_step(estimator) for estimator in estimators}, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
