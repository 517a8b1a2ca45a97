from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from art_jacreg.compare import (
    ADAPTATIONS,
    DEFENCES,
    DefenceSpec,
    Protocol,
    TrainContext,
    get_defence,
    list_defences,
    register_defence,
    run_comparison,
    train_defence,
)
from art_jacreg.data import load_mnist
from art_jacreg.models import mnist_cnn

ART_TRAINERS = ["fgsm", "madry", "pgd-l2", "trades", "fbf", "awp", "ibp"]


@pytest.fixture(scope="module")
def mnist():
    (x, y), (xt, yt), _, _ = load_mnist()
    return x, y, xt, yt


def _tiny(**changes):
    base = dict(
        name="tiny",
        defences=("plain", "fgsm", "jr-l2-0.01"),
        n_train=256,
        n_test=100,
        n_attack=24,
        n_certify=24,
        n_jacobian=24,
        epochs=1,
        batch_size=64,
        attack_iter=2,
        eps_l2=(0.5, 1.0),
        eps_linf=(0.05, 0.1),
        cert_eps_l2=(0.1,),
        cert_eps_linf=(0.01,),
    )
    base.update(changes)
    return Protocol(**base)


def test_registry_has_every_art_trainer_and_jr_in_both_norms():
    trainers = {spec.trainer for spec in DEFENCES.values()}
    assert trainers == {"plain", "fgsm", "madry", "pgd", "trades", "fbf", "awp", "ibp", "jr", "certified"}
    jr_norms = {spec.norm for spec in DEFENCES.values() if spec.trainer == "jr"}
    assert jr_norms == {2.0, np.inf}
    assert list_defences()[0] == "plain"
    with pytest.raises(ValueError, match="unknown defence 'nope'.*known defences: plain"):
        get_defence("nope")
    with pytest.raises(ValueError, match="spec.trainer"):
        register_defence(DefenceSpec("x", "no-such-trainer"))
    for spec in DEFENCES.values():
        assert ADAPTATIONS[spec.trainer], spec.name


@pytest.mark.parametrize("name", ART_TRAINERS)
def test_art_trainer_adapters_train_one_tiny_epoch(name, mnist, tmp_path):
    from art import config

    x, y, _, _ = mnist
    before_path = config.ART_DATA_PATH
    before_files = set(os.listdir(before_path)) if os.path.isdir(before_path) else set()
    ctx = TrainContext(x[:64], y[:64], epochs=1, batch_size=32, lr=1e-3, seed=0, train_eps={"2": 1.0, "inf": 0.1})
    x_before = ctx.x.copy()
    torch_state, np_state = torch.random.get_rng_state(), np.random.get_state()
    outcome = train_defence(get_defence(name), ctx)
    # The global generators ART's trainers use are seeded inside the harness and restored afterwards.
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    model = outcome.model
    reference = mnist_cnn(seed=0)
    assert isinstance(model, torch.nn.Sequential)
    assert model.state_dict().keys() == reference.state_dict().keys()
    changed = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values())]
    assert all(changed), f"{name} left some layers untrained: {changed}"
    with torch.no_grad():
        assert torch.isfinite(model(torch.from_numpy(x[:8]))).all()
    assert outcome.seconds > 0 and outcome.adaptations == ADAPTATIONS[get_defence(name).trainer]
    assert outcome.train_eps == (1.0 if get_defence(name).norm == 2 else 0.1)
    np.testing.assert_array_equal(ctx.x, x_before)
    # ART_DATA_PATH is restored and nothing was written into it (AWP would write checkpoints there).
    assert config.ART_DATA_PATH == before_path
    after_files = set(os.listdir(before_path)) if os.path.isdir(before_path) else set()
    assert after_files == before_files


def test_the_art_defects_the_adapters_avoid_are_still_there(mnist):
    """If one of these stops failing, ART fixed the defect and the adaptation can be dropped."""
    from art.defences.trainer import AdversarialTrainerFBFPyTorch, AdversarialTrainerTRADESPyTorch

    from art_jacreg.compare.defences import _NonSequential, _pgd
    from art_jacreg.models import make_classifier

    x, y, _, _ = mnist
    clf = make_classifier(mnist_cnn(seed=0))
    trades = AdversarialTrainerTRADESPyTorch(clf, _pgd(clf, np.inf, 0.1, 2), beta=6.0)
    with pytest.raises(RuntimeError):  # nn.Sequential: accuracy read from the first layer's output
        trades.fit(x[:32], y[:32], batch_size=32, nb_epochs=1)
    with pytest.raises(RuntimeError):
        AdversarialTrainerFBFPyTorch(clf, eps=0.1).fit(x[:32], y[:32], batch_size=32, nb_epochs=1)
    wrapped = make_classifier(_NonSequential.wrap(mnist_cnn(seed=0)))
    with pytest.raises(IndexError):  # index labels
        AdversarialTrainerFBFPyTorch(wrapped, eps=0.1).fit(x[:32], y[:32].argmax(1), batch_size=32, nb_epochs=1)


def test_harness_end_to_end_and_resume(tmp_path):
    out = tmp_path / "res"
    first = run_comparison(_tiny(), out_dir=out, quiet=True)
    assert first.recomputed == ["plain", "fgsm", "jr-l2-0.01"]
    assert [row["status"] for row in first.rows] == ["ok"] * 3
    for row in first.rows:
        assert 0 <= row["clean_accuracy"] <= 1
        for norm, sweep in (("2", ["0.5", "1"]), ("inf", ["0.05", "0.1"])):
            accs = [row["robust_accuracy"][norm][e] for e in sweep]
            assert all(0 <= a <= 1 for a in accs)
            assert accs[1] <= accs[0] + 1e-12  # nested balls: the larger eps cannot be more robust (same points)
        for norm in ("2", "inf"):
            assert row["gaps"][f"robust_{norm}"]["loss_test"] >= 0
        assert row["seconds_per_epoch"] == pytest.approx(row["train_seconds"])
        assert row["jacobian"]["train"]["frobenius"] > 0 and row["jacobian"]["test"]["l11"] > 0
        assert row["generalization"]["spectral_product"] > 0
    assert first.row("fgsm")["train_eps"] == 0.1 and first.row("jr-l2-0.01")["train_eps"] is None
    assert first.row("plain")["norm"] is None
    for key in ("json", "csv", "markdown", "robust_vs_eps", "robust_vs_time", "jacobian_vs_gap"):
        assert first.paths[key].is_file() and first.paths[key].stat().st_size > 0
    assert first.paths["robust_vs_eps"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = first.paths["markdown"].read_text()
    assert "| fgsm | l∞ 0.1 |" in summary and "Adaptations around ART" in summary
    stored = json.loads(first.paths["json"].read_text())
    assert [r["defence"] for r in stored["results"]] == ["plain", "fgsm", "jr-l2-0.01"]

    cached = sorted((out / "cache").glob("*.json"))
    assert len(cached) == 3
    victim = next(p for p in cached if p.name.startswith("fgsm-"))
    victim.unlink()
    second = run_comparison(_tiny(), out_dir=out, quiet=True)
    assert second.recomputed == ["fgsm"]
    assert second.row("plain") == json.loads(json.dumps(first.row("plain"), allow_nan=True)) or (
        second.row("plain")["clean_accuracy"] == first.row("plain")["clean_accuracy"]
    )
    # Determinism: the recomputed defence reproduces its previous result (same seed, same data).
    assert second.row("fgsm")["clean_accuracy"] == first.row("fgsm")["clean_accuracy"]
    assert second.row("fgsm")["robust_accuracy"] == first.row("fgsm")["robust_accuracy"]
    # A changed protocol gets a different hash: nothing is reused.
    third = run_comparison(_tiny(defences=("plain",), attack_iter=3), out_dir=out, quiet=True, plots=False)
    assert third.recomputed == ["plain"]


def test_failing_defence_gets_an_error_row(tmp_path):
    broken = register_defence(DefenceSpec("broken-jr", "jr", 2.0, {"reg_weight": -1.0}, "always fails"))
    try:
        result = run_comparison(_tiny(defences=("broken-jr", "plain")), out_dir=tmp_path, quiet=True, plots=True)
    finally:
        DEFENCES.pop(broken.name)
    row = result.row("broken-jr")
    assert row["status"] == "error" and row["stage"] == "train"
    assert "reg_weight" in row["error"] and "Traceback" in row["traceback"]
    assert result.row("plain")["status"] == "ok"
    summary = result.paths["markdown"].read_text()
    assert "| broken-jr |" in summary and "**error** (train): ValueError" in summary
    # Errors are not cached, so a rerun retries them.
    assert not list((tmp_path / "cache").glob("broken-jr-*.json"))


def test_protocol_validation():
    with pytest.raises(ValueError, match="epochs"):
        Protocol(epochs=0)
    with pytest.raises(ValueError, match="eps_l2"):
        Protocol(eps_l2=(1.0, -0.5))
    with pytest.raises(ValueError, match="ref_eps"):
        Protocol(ref_eps_l2=0.7)
    with pytest.raises(ValueError, match="unknown preset"):
        run_comparison("nope")
    with pytest.raises(ValueError, match="unknown defence"):
        run_comparison(_tiny(defences=("plain", "nope")))
