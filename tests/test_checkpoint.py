"""Resumable training: ``fit(..., checkpoint=path)`` saves every epoch atomically and resumes bit-identically."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from art.data_generators import DataGenerator

from art_jacreg.training.checkpoint import FORMAT

sys.path.insert(0, str(Path(__file__).parent))
import checkpoint_worker  # noqa: E402

WORKER = Path(__file__).with_name("checkpoint_worker.py")
ROOT = Path(__file__).resolve().parent.parent


def _run_worker(checkpoint: Path, nb_epochs: int, kill_after: int, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    command = [sys.executable, str(WORKER), str(checkpoint), str(nb_epochs), str(kill_after), str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_a_run_killed_after_an_epoch_resumes_to_bit_identical_weights(tmp_path: Path) -> None:
    ckpt = tmp_path / "run.ckpt"
    killed = _run_worker(ckpt, 4, 2, tmp_path / "never.pt")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]  # no temporary file left behind
    resumed = _run_worker(ckpt, 4, 0, tmp_path / "resumed.pt")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = _run_worker(tmp_path / "other.ckpt", 4, 0, tmp_path / "straight.pt")
    assert straight.returncode == 0, straight.stderr[-2000:]
    got, want = (torch.load(tmp_path / name, weights_only=True) for name in ("resumed.pt", "straight.pt"))
    for name, value in want["weights"].items():
        assert torch.equal(got["weights"][name], value), name
    assert _without_seconds(got["history"]) == _without_seconds(want["history"])
    assert [h["epoch"] for h in got["history"]] == [1, 2, 3, 4]


def _data(n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    (x, y), _, _, _ = checkpoint_worker.load_mnist()
    return x[:n], y[:n]


def test_in_process_resume_matches_and_the_file_holds_the_run(tmp_path: Path) -> None:
    x, y = _data()
    ckpt = tmp_path / "a.ckpt"
    first, scheduler = checkpoint_worker.make_run()
    first.fit(x, y, batch_size=32, nb_epochs=2, scheduler=scheduler, checkpoint=ckpt)
    payload = torch.load(ckpt, weights_only=True)
    assert payload["format"] == FORMAT and payload["epoch"] == 2
    assert payload["history"] == first.history
    assert payload["scheduler"]["last_epoch"] == 2
    resumed, scheduler = checkpoint_worker.make_run()
    resumed.fit(x, y, batch_size=32, nb_epochs=3, scheduler=scheduler, checkpoint=ckpt)
    straight, scheduler = checkpoint_worker.make_run()
    straight.fit(x, y, batch_size=32, nb_epochs=3, scheduler=scheduler)
    for a, b in zip(resumed.get_classifier().model.parameters(), straight.get_classifier().model.parameters()):
        assert torch.equal(a, b)
    assert _without_seconds(resumed.history) == _without_seconds(straight.history)
    assert scheduler.last_epoch == 3


def test_a_finished_checkpoint_trains_nothing_and_restores_its_weights(tmp_path: Path) -> None:
    x, y = _data()
    ckpt = tmp_path / "done.ckpt"
    trainer, _ = checkpoint_worker.make_run()
    trainer.fit(x, y, batch_size=32, nb_epochs=1, checkpoint=ckpt)
    again, _ = checkpoint_worker.make_run()
    again.fit(x, y, batch_size=32, nb_epochs=1, checkpoint=ckpt)
    assert again.history == trainer.history
    for a, b in zip(again.get_classifier().model.parameters(), trainer.get_classifier().model.parameters()):
        assert torch.equal(a, b)
    again.fit(x, y, batch_size=32, nb_epochs=2, checkpoint=ckpt)
    with pytest.raises(ValueError, match=r"done\.ckpt already holds 2 epochs, more than nb_epochs=1"):
        checkpoint_worker.make_run()[0].fit(x, y, batch_size=32, nb_epochs=1, checkpoint=ckpt)


def test_a_checkpoint_of_another_run_is_refused_naming_the_file(tmp_path: Path) -> None:
    x, y = _data()
    ckpt = tmp_path / "run.ckpt"
    trainer, _ = checkpoint_worker.make_run()
    trainer.fit(x, y, batch_size=32, nb_epochs=1, checkpoint=ckpt)
    other, _ = checkpoint_worker.make_run()
    with pytest.raises(ValueError, match=r"run\.ckpt.*batch_size is 32 in the file but 16"):
        other.fit(x, y, batch_size=16, nb_epochs=2, checkpoint=ckpt)
    other.set_params(reg_weight=0.5)
    with pytest.raises(ValueError, match=r"run\.ckpt.*trainer"):
        other.fit(x, y, batch_size=32, nb_epochs=2, checkpoint=ckpt)
    wider = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    from art_jacreg.models import make_classifier
    from art_jacreg.trainer import JacobianRegularizedTrainer

    third = JacobianRegularizedTrainer(make_classifier(wider, device_type="cpu"), seed=0, verbose=False)
    with pytest.raises(ValueError, match=r"run\.ckpt.*'1\.bias' has shape \(32,\) in the file but \(16,\)"):
        third.fit(x, y, batch_size=32, nb_epochs=2, checkpoint=ckpt)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    x, y = _data()
    for name, content in (("junk.ckpt", b"not a torch file"), ("weights.ckpt", None)):
        path = tmp_path / name
        if content is None:
            torch.save({"weight": torch.zeros(2)}, path)
        else:
            path.write_bytes(content)
        trainer, _ = checkpoint_worker.make_run()
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            trainer.fit(x, y, batch_size=32, nb_epochs=1, checkpoint=path)


def test_bad_checkpoint_arguments_are_refused(tmp_path: Path) -> None:
    x, y = _data()
    trainer, _ = checkpoint_worker.make_run()
    with pytest.raises(TypeError, match="`checkpoint` must be None or a file path"):
        trainer.fit(x, y, batch_size=32, nb_epochs=1, checkpoint=3)
    with pytest.raises(ValueError, match="is a directory"):
        trainer.fit(x, y, batch_size=32, nb_epochs=1, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        trainer.fit(x, y, batch_size=32, nb_epochs=1, checkpoint=tmp_path / "missing" / "run.ckpt")


class _FixedBatches(DataGenerator):
    """The same batches in the same order every epoch (so a resumed generator run can be bit-identical)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        super().__init__(size=len(x), batch_size=batch_size)
        self.x, self.y, self.position = x, y, 0

    def get_batch(self) -> tuple[np.ndarray, np.ndarray]:
        start = self.position
        self.position = (start + self.batch_size) % self.size
        return self.x[start : start + self.batch_size], self.y[start : start + self.batch_size]


def test_fit_generator_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    x, y = _data()
    ckpt = tmp_path / "gen.ckpt"
    trainer, _ = checkpoint_worker.make_run()
    trainer.fit_generator(_FixedBatches(x, y, 32), nb_epochs=1, checkpoint=ckpt)
    resumed, _ = checkpoint_worker.make_run()
    resumed.fit_generator(_FixedBatches(x, y, 32), nb_epochs=2, checkpoint=ckpt)
    straight, _ = checkpoint_worker.make_run()
    straight.fit_generator(_FixedBatches(x, y, 32), nb_epochs=2)
    for a, b in zip(resumed.get_classifier().model.parameters(), straight.get_classifier().model.parameters()):
        assert torch.equal(a, b)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
