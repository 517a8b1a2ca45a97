"""``art-jacreg train --certified``: trains mnist_cnn with CertifiedJacobianTrainer (tiny sizes) and refuses bad use."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from art_jacreg.cli import main


def test_train_certified_saves_a_model_that_certify_loads(tmp_path):
    out = tmp_path / "cert.pt"
    args = ["train", "--certified", "--norm", "2", "--eps", "0.3", "--bound", "global", "--epochs", "1"]
    args += ["--lr-schedule", "constant"]
    res = subprocess.run(
        [sys.executable, "-m", "art_jacreg.cli", *args, "--n-train", "256", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "certified norm=2 eps=0.3 bound=global" in res.stdout and "saved state_dict to" in res.stdout
    from art_jacreg.models import mnist_cnn

    model = mnist_cnn(seed=1)
    model.load_state_dict(torch.load(out, weights_only=True))
    assert not torch.equal(model[0].weight, mnist_cnn(seed=0)[0].weight)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--certified", "--norm", "2"], "needs --eps"),
        (["train", "--eps", "0.3"], "only to train --certified"),
        (["train", "--bound", "local"], "only to train --certified"),
        (["train", "--lr-schedule", "cosine"], "only to train --certified"),
    ],
)
def test_certified_options_are_checked_before_training(argv, message, tmp_path, capsys, monkeypatch):
    import art_jacreg.workflows

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(art_jacreg.workflows, "train_mnist_cnn", no_training)
    assert main([*argv, "--out", str(tmp_path / "m.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
