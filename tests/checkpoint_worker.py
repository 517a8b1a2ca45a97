"""A resumable training run for tests/test_checkpoint.py, run as a script (it may kill itself mid-run).

``python tests/checkpoint_worker.py CHECKPOINT NB_EPOCHS KILL_AFTER OUT``: trains a small MLP with dropout (torch's
global generator), Adam, a StepLR scheduler and one random projection (the trainer's generator) on embedded MNIST
digits with ``fit(..., checkpoint=CHECKPOINT)``; with ``KILL_AFTER = k > 0`` the process sends itself SIGKILL right
after the checkpoint of epoch ``k`` is written; otherwise it saves the final weights and history to ``OUT``.
"""

from __future__ import annotations

import os
import signal
import sys

import torch
from torch import nn

from art_jacreg.data import load_mnist
from art_jacreg.models import make_classifier
from art_jacreg.trainer import JacobianRegularizedTrainer
from art_jacreg.training.checkpoint import CheckpointHooks


def make_run() -> tuple[JacobianRegularizedTrainer, torch.optim.lr_scheduler.LRScheduler]:
    """Trainer and scheduler of the run (seed 0)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))
    classifier = make_classifier(model, lr=1e-3, device_type="cpu")
    scheduler = torch.optim.lr_scheduler.StepLR(classifier.optimizer, step_size=1, gamma=0.7)
    trainer = JacobianRegularizedTrainer(classifier, norm=2, reg_weight=0.01, n_projections=1, seed=0, verbose=False)
    return trainer, scheduler


def main() -> None:
    checkpoint, nb_epochs, kill_after, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    if kill_after > 0:
        save = CheckpointHooks.on_epoch_end

        def save_then_die(self, epoch, record):
            save(self, epoch, record)
            if epoch == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        CheckpointHooks.on_epoch_end = save_then_die
    (x, y), _, _, _ = load_mnist()
    trainer, scheduler = make_run()
    trainer.fit(x[:256], y[:256], batch_size=32, nb_epochs=nb_epochs, scheduler=scheduler, checkpoint=checkpoint)
    torch.save({"weights": trainer.get_classifier().model.state_dict(), "history": trainer.history}, out)


if __name__ == "__main__":
    main()
