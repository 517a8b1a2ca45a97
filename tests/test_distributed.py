"""Data-parallel training on torch.distributed (gloo, 2 processes on this machine, torchrun's environment).

Each test starts the ranks as subprocesses of ``tests/ddp_worker.py`` with ``RANK``/``WORLD_SIZE``/``MASTER_PORT`` set
(as ``torchrun --nproc_per_node 2`` does), under a wall-clock limit so that nothing can hang the suite, and compares
what they saved with a single-process run in this process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from art_jacreg.training.distributed import shard_indices

sys.path.insert(0, str(Path(__file__).parent))
import ddp_worker  # noqa: E402

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(scenario: str, out_dir: Path, world_size: int = 2, limit: float = 300.0) -> list[subprocess.Popen]:
    """Run the ranks to completion (or kill them after ``limit`` seconds and fail); return the finished processes."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world_size))
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = []
    for rank in range(world_size):
        with open(out_dir / f"rank{rank}.log", "w") as log:  # the child keeps its own copy of the descriptor
            rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank))
            command = [sys.executable, str(WORKER), scenario, str(out_dir)]
            procs.append(subprocess.Popen(command, env=rank_env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + limit
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"the ranks did not finish within {limit} s: {_logs(out_dir, world_size)}")
    return procs


def _logs(out_dir: Path, world_size: int) -> str:
    return "\n".join(f"--- rank {r}:\n" + (out_dir / f"rank{r}.log").read_text()[-3000:] for r in range(world_size))


def test_shards_follow_the_distributed_sampler_rule() -> None:
    order = np.random.default_rng(0).permutation(11)
    sampler_ranks = []
    for rank in range(3):
        sampler = torch.utils.data.DistributedSampler(range(11), num_replicas=3, rank=rank, shuffle=False)
        sampler_ranks.append([order[i] for i in sampler])
        assert shard_indices(order, rank, 3).tolist() == sampler_ranks[-1]
    assert sorted(np.concatenate(sampler_ranks).tolist()) == sorted([*range(11), order[0]])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    procs = _launch("train", out_dir)
    assert [p.returncode for p in procs] == [0, 0], _logs(out_dir, 2)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _single_process(n: int, nb_epochs: int) -> ddp_worker.JacobianRegularizedTrainer:
    x, y = ddp_worker.data()
    trainer = ddp_worker.make_trainer()
    trainer.fit(x[:n], y[:n], batch_size=64, nb_epochs=nb_epochs)
    return trainer


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def test_one_step_of_two_ranks_with_batch_32_equals_one_process_with_batch_64(ddp_run: list[dict]) -> None:
    reference = ddp_worker.weights(_single_process(64, 1))
    initial = ddp_worker.weights(ddp_worker.make_trainer())
    assert any(not torch.equal(reference[k], initial[k]) for k in reference)  # the step changed the weights
    for rank in range(2):
        _assert_close(ddp_run[rank]["one_step"], reference)


def test_epochs_of_two_ranks_equal_one_process_and_history_is_global(ddp_run: list[dict]) -> None:
    trainer = _single_process(ddp_worker.N_SAMPLES, 2)
    _assert_close(ddp_run[0]["epochs"], ddp_worker.weights(trainer))
    for rank in range(2):
        assert len(ddp_run[rank]["history"]) == 2
        for got, want in zip(ddp_run[rank]["history"], trainer.history, strict=True):
            assert got.keys() == {k for k in want if k != "seconds"}
            for key, value in got.items():
                if want[key] is None:
                    assert value is None, key
                else:
                    assert value == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert trainer.history[0]["regularizer"] > 0  # the Jacobian term was part of the objective


def test_all_ranks_end_with_identical_weights(ddp_run: list[dict]) -> None:
    for key in ("one_step", "epochs", "resumed"):
        for name, value in ddp_run[0][key].items():
            assert torch.equal(value, ddp_run[1][key][name]), (key, name)


def test_the_model_is_left_a_plain_module(ddp_run: list[dict]) -> None:
    for rank in range(2):
        assert ddp_run[rank]["same_object"]
        assert ddp_run[rank]["hooks"] == 0
        assert ddp_run[rank]["grads_local"]  # no DDP gradient hook left: a backward is this rank's own


def test_a_resumed_distributed_run_is_bit_identical(ddp_run: list[dict]) -> None:
    for rank in range(2):
        assert ddp_run[rank]["resumed_epochs"] == [1, 2, 3]
        for name, value in ddp_run[rank]["resumed"].items():
            assert torch.equal(value, ddp_run[rank]["straight"][name]), name


def test_a_nonfinite_step_on_one_rank_rolls_back_every_rank(ddp_run: list[dict]) -> None:
    assert "Another process had a non-finite" in ddp_run[0]["nonfinite_message"]
    assert "Non-finite training loss" in ddp_run[1]["nonfinite_message"]
    for rank in range(2):
        assert ddp_run[rank]["rolled_back"]  # the weights before the bad step, on both ranks
    for name, value in ddp_run[0]["nonfinite_weights"].items():
        assert torch.equal(value, ddp_run[1]["nonfinite_weights"][name]), name


def test_an_error_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    start = time.monotonic()
    procs = _launch("raise", tmp_path, limit=150.0)
    elapsed = time.monotonic() - start
    logs = _logs(tmp_path, 2)
    assert procs[1].returncode != 0 and "injected failure on rank 1" in logs
    assert procs[0].returncode != 0, logs  # rank 0 did not finish training alone, nor hang
    assert not (tmp_path / "rank0.pt").exists()
    assert elapsed < 150.0


def test_the_cli_trains_under_torchrun_and_checkpoints(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    train = ["-m", "art_jacreg.cli", "train", "--epochs", "1", "--n-train", "128", "--batch-size", "32", "--quiet"]
    files = ["--out", str(tmp_path / "model.pt"), "--checkpoint", str(tmp_path / "run.ckpt")]
    done = subprocess.run([*torchrun, *train, *files, "--distributed"], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved state_dict") == 1  # rank 0 only
    payload = torch.load(tmp_path / "run.ckpt", weights_only=True)
    assert payload["epoch"] == 1 and payload["identity"]["world_size"] == 2
    assert len(payload["random"]) == 2  # the random states of both ranks
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in payload["model"].items())
    refused = subprocess.run([*torchrun, *train, *files], env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "add --distributed" in refused.stderr
