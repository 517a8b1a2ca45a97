r"""Data-parallel Jacobian-regularized training with torchrun (one node or several).

One node, 2 processes (CPUs: gloo; GPUs: NCCL, one GPU per process)::

    torchrun --standalone --nproc_per_node 2 examples/ddp_train.py --epochs 3 --checkpoint run.ckpt

Two nodes with 4 GPUs each (the same command on both nodes; c10d numbers the nodes)::

    torchrun --nnodes 2 --nproc_per_node 4 \
        --rdzv-backend c10d --rdzv-endpoint node0.example.org:29400 --rdzv-id jr-run \
        examples/ddp_train.py --epochs 20 --checkpoint run.ckpt

Every process runs this same script on the same data. ``JacobianRegularizedTrainer.fit`` sees the initialised
process group and trains data-parallel: each rank takes its shard of every epoch, the model runs inside
DistributedDataParallel, rank 0 shows the progress and writes the checkpoint (on
rank 0's node; rank 0 reads it when resuming and sends it to the other ranks). Kill the run at any time and start the
same command again: it resumes after the last completed epoch.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from art_jacreg import JacobianRegularizedTrainer, load_mnist
from art_jacreg.checkpoints import save_state_dict
from art_jacreg.models import make_classifier, mnist_cnn


def main() -> None:
    """Parse the options, join the process group, train, save on rank 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (resumed from when it exists)")
    parser.add_argument("--out", default="ddp_model.pt")
    args = parser.parse_args()

    # torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; one GPU per process when there are GPUs.
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl")
    else:
        torch.set_num_threads(1)  # one core per process; raise it when each process has several cores
        dist.init_process_group("gloo")

    (x_train, y_train), (x_test, y_test), _, _ = load_mnist()
    # Same seed on every rank: DDP broadcasts rank 0's weights anyway, and the trainer shares rank 0's shuffling.
    classifier = make_classifier(mnist_cnn(seed=0))  # CUDA device of this process if there is one, else the CPU
    trainer = JacobianRegularizedTrainer(classifier, norm=2, seed=0)
    trainer.fit(x_train, y_train, batch_size=args.batch_size, nb_epochs=args.epochs, checkpoint=args.checkpoint)

    if dist.get_rank() == 0:
        accuracy = (classifier.predict(x_test).argmax(1) == y_test.argmax(1)).mean()
        print(f"{dist.get_world_size()} processes; test accuracy {accuracy:.4f}; history {trainer.history[-1]}")
        save_state_dict(classifier.model, args.out)  # written atomically
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
