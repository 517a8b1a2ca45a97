"""Seeds, resume per (defence, seed) and the choice of architecture, on tiny real runs."""

from __future__ import annotations

import pytest
import torch

from art_jacreg.compare import Protocol, TrainContext, get_defence, run_comparison, train_defence
from art_jacreg.data import load_mnist


def _tiny(**changes):
    base = dict(
        name="tiny",
        defences=("plain",),
        n_train=256,
        n_test=100,
        n_attack=16,
        n_certify=16,
        n_jacobian=16,
        epochs=1,
        batch_size=64,
        attack_iter=2,
        eps_l2=(1.5,),
        eps_linf=(0.3,),
        ref_eps_l2=1.5,
        ref_eps_linf=0.3,
        cert_eps_l2=(0.3,),
        cert_eps_linf=(0.1,),
    )
    base.update(changes)
    return Protocol(**base)


def test_every_seed_is_cached_separately_and_resumed(tmp_path):
    out = tmp_path / "res"
    first = run_comparison(_tiny(seeds=(0, 1)), out_dir=out, quiet=True, plots=False)
    assert first.recomputed_runs == [("plain", 0), ("plain", 1)]
    assert [row["seed"] for row in first.rows] == [0, 1]
    # Different seeds: different initial weights and data order, so different trained models.
    assert first.row("plain", 0)["jacobian"] != first.row("plain", 1)["jacobian"]
    files = sorted(p.name for p in (out / "cache").glob("*.json"))
    assert len(files) == 2 and files[0].startswith("plain-s0-") and files[1].startswith("plain-s1-")
    (out / "cache" / files[1]).unlink()
    second = run_comparison(_tiny(seeds=(0, 1)), out_dir=out, quiet=True, plots=False)
    assert second.recomputed_runs == [("plain", 1)]
    assert second.row("plain", 1)["jacobian"] == first.row("plain", 1)["jacobian"]  # deterministic per seed
    # Adding a seed computes only the new one; the headline counts the seeds.
    third = run_comparison(_tiny(seeds=(0, 1, 2)), out_dir=out, quiet=True, plots=False)
    assert third.recomputed_runs == [("plain", 2)]
    line = next(line for line in third.headline().splitlines() if line.startswith("plain"))
    assert " 3 " in line and "±" in line
    summary = third.paths["markdown"].read_text()
    assert "seeds 0, 1, 2 (n = 3" in summary and "mean ± 2·SE" in summary


def test_model_selection_trains_and_reports_the_chosen_architecture(tmp_path):
    result = run_comparison(_tiny(model="mnist_maxpool_cnn"), out_dir=tmp_path, quiet=True)
    row = result.row("plain")
    assert row["status"] == "ok" and row["model"] == "mnist_maxpool_cnn"
    assert "mnist_maxpool_cnn" in result.headline() and "`mnist_maxpool_cnn`" in result.paths["markdown"].read_text()
    for key in ("robust_vs_time", "certified_vs_time", "headline"):
        assert result.paths[key].is_file()
    (x, y), _, _, _ = load_mnist()
    ctx = TrainContext(x[:64], y[:64], 1, 32, 1e-3, 0, {"2": 1.0, "inf": 0.1}, model="mnist_maxpool_cnn")
    outcome = train_defence(get_defence("fgsm"), ctx)
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in outcome.model)
    with pytest.raises(ValueError, match="MaxPool2d"):  # ART's IBP converter cannot take max-pooling: stated
        train_defence(get_defence("ibp"), ctx)


def test_cli_prints_the_headline_table(tmp_path, capsys):
    from art_jacreg.cli import main

    argv = [
        "compare",
        "--defences",
        "plain",
        "--n-train",
        "200",
        "--epochs",
        "1",
        "--n-attack",
        "16",
        "--attack-iter",
        "1",
        "--seeds",
        "0",
        "1",
        "--out",
        str(tmp_path),
        "--quiet",
        "--no-plots",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("defence"))
    for column in ("model", "seeds", "s/epoch", "clean", "AA-fast l2 1.5", "AA-fast l∞ 0.3", "cert l2 0.3"):
        assert column in header
    plain = next(line for line in out.splitlines() if line.startswith("plain"))
    assert "mnist_cnn" in plain and "±" in plain  # two seeds: mean ± std
    assert "APGD-CE + APGD-DLR, 1 iterations each" in out and "computed 2, loaded 0" in out


def test_standard_autoattack_option_runs_on_the_first_seed_and_is_reported(tmp_path):
    protocol = _tiny(seeds=(0, 1), standard_autoattack=True, n_standard=12, square_queries=5)
    result = run_comparison(protocol, out_dir=tmp_path, quiet=True, plots=False)
    first, second = result.row("plain", 0), result.row("plain", 1)
    assert second["standard_autoattack"] == {}  # first seed only
    for key, eps in (("2", 1.5), ("inf", 0.3)):
        entry = first["standard_autoattack"][key]
        assert entry["eps"] == eps and entry["n"] == 12 and entry["square_queries"] == 5
        assert entry["standard"] <= entry["fast"]  # run after the fast pair: never above it
        assert entry["extra_broken"] == round((entry["fast"] - entry["standard"]) * 12)
    assert "AA-std l2 1.5" in result.headline() and "Square with 5 queries" in result.headline()
    summary = result.paths["markdown"].read_text()
    assert "## Standard AutoAttack against the fast pair (first seed)" in summary
