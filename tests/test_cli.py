from __future__ import annotations

import json
import subprocess
import sys

import pytest

from art_jacreg.cli import build_parser, main


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "art_jacreg.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model.pt"
    res = _run("train", "--epochs", "1", "--n-train", "400", "--reg-weight", "0.01", "--out", str(path), "--quiet")
    assert res.returncode == 0, res.stderr
    assert "saved state_dict to" in res.stdout and "test accuracy" in res.stdout
    return path


def test_train_saves_a_state_dict_loadable_with_weights_only(model_path):
    import torch

    from art_jacreg.models import mnist_cnn

    state = torch.load(model_path, weights_only=True)
    model = mnist_cnn(seed=1)
    model.load_state_dict(state)
    assert not torch.equal(model[0].weight, mnist_cnn(seed=0)[0].weight)  # trained, not the initial weights


def test_certify_prints_median_radius_and_certified_accuracy(model_path):
    res = _run(
        "certify",
        str(model_path),
        "--norm",
        "inf",
        "--eps",
        "0.001",
        "0.5",
        "--n",
        "16",
        "--method",
        "lipschitz",
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    assert "median certified radius" in res.stdout
    lines = {line.split(":")[0].strip(): line.split(":")[1].strip() for line in res.stdout.splitlines() if ":" in line}
    assert float(lines["certified accuracy at eps 0.5"]) == 0.0  # nothing is certified at l-inf 0.5
    assert 0.0 <= float(lines["certified accuracy at eps 0.001"]) <= float(lines["clean accuracy"])


def test_report_prints_markdown_and_writes_csv_json(model_path, tmp_path):
    csv_path, json_path = tmp_path / "r.csv", tmp_path / "r.json"
    res = _run(
        "report",
        str(model_path),
        "--eps",
        "0.5",
        "--n",
        "8",
        "--method",
        "lipschitz",
        "--csv",
        str(csv_path),
        "--json",
        str(json_path),
        "--generalization",
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    assert "|" in res.stdout and "Generalization report" in res.stdout
    assert "VACUOUS" in res.stdout or "non-vacuous" in res.stdout
    assert csv_path.read_text().count("\n") >= 9  # header + 8 samples
    assert isinstance(json.loads(json_path.read_text()), dict)


def test_compare_runs_resumes_and_lists_defences(tmp_path):
    out = tmp_path / "res"
    args = [
        "compare",
        "--defences",
        "plain,jr-linf-0.001",
        "--n-train",
        "200",
        "--epochs",
        "1",
        "--n-attack",
        "16",
        "--attack-iter",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]
    first = _run(*args)
    assert first.returncode == 0, first.stderr
    assert f"results written to: {out.resolve()}" in first.stdout
    assert "computed 2, loaded 0" in first.stdout
    assert first.stderr.strip() == ""  # --quiet: no progress bars, no log lines
    for name in (
        "summary.md",
        "results.json",
        "results.csv",
        "robust_accuracy_vs_eps.png",
        "robust_accuracy_vs_training_time.png",
        "jacobian_norm_vs_robust_gap.png",
    ):
        assert (out / name).is_file(), name
    next((out / "cache").glob("plain-*.json")).unlink()
    second = _run(*args)
    assert second.returncode == 0, second.stderr
    assert "computed 1, loaded 1" in second.stdout


def test_list_defences(capsys):
    assert main(["compare", "--list-defences"]) == 0
    out = capsys.readouterr().out
    assert "jr-linf-0.001" in out and "trades" in out and "AdversarialTrainerMadryPGD" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["certify", "missing.pt"], "no such file: missing.pt"),
        (["compare", "--defences", "plain,bogus"], "unknown defence(s) bogus"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_no_traceback(args, message, tmp_path):
    res = _run(*args, cwd=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["certify", "m.pt", "--eps", "-0.1"], "eps must be a finite number > 0"),
        (["certify", "m.pt", "--eps", "nan"], "eps must be a finite number > 0"),
        (["report", "m.pt", "--eps", "abc"], "eps must be a number"),
        (["compare", "--preset", "huge"], "invalid choice"),
        (["train", "--norm", "3"], "norm must be 2 or inf"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_argument_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_bad_data_path_and_bad_model_file(tmp_path, capsys):
    bogus = tmp_path / "not-a-model.pt"
    bogus.write_text("hello")
    assert main(["certify", str(bogus), "--quiet"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nope.npz"), "--quiet"]) == 2
    assert "--data: no such file or directory" in capsys.readouterr().err
    assert main(["compare", "--data", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "--data: no such file or directory" in capsys.readouterr().err


def test_every_command_documents_every_option():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(subparsers.choices) == {"train", "certify", "report", "compare"}
    for name, sub in subparsers.choices.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, f"{name} {action.dest} has no help"
        text = sub.format_help()
        assert "--quiet" in text and "--threads" in text


def test_cli_choices_mirror_the_library() -> None:
    from art_jacreg import cli
    from art_jacreg.attacks import ATTACKS
    from art_jacreg.certify import METHODS

    assert cli.METHOD_CHOICES == METHODS
    assert cli.ATTACK_CHOICES == ATTACKS


# ------------------------------------------------------------------ output paths are checked before any work starts


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """A 64/16-digit MNIST-shaped npz, so that the commands below load data in milliseconds."""
    import numpy as np

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
        y_train=np.arange(64) % 10,
        x_test=rng.integers(0, 256, (16, 28, 28), dtype=np.uint8),
        y_test=np.arange(16) % 10,
    )
    return path


def _unwritable_dir(tmp_path):
    """A folder no file can be created in: a read-only folder, or /proc where permission bits do not stop root."""
    from pathlib import Path

    folder = tmp_path / "ro"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o500)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()
    return Path("/proc")


def _fail(argv, capsys, monkeypatch):
    """Run ``main(argv)``: it must return 2 with one line on stderr, without doing any work (training is refused)."""
    import art_jacreg.workflows

    def no_training(*args, **kwargs):
        raise AssertionError("training started although an output path is unusable")

    monkeypatch.setattr(art_jacreg.workflows, "train_mnist_cnn", no_training)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_train_out_problems_are_found_before_training(tmp_path, tiny_npz, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    base = ["train", "--data", str(tiny_npz), "--quiet", "--out"]
    err = _fail([*base, str(tmp_path)], capsys, monkeypatch)
    assert f"art-jacreg train: error: --out: {tmp_path} is a directory; give a file name" in err
    err = _fail([*base, str(tmp_path / "afile" / "model.pt")], capsys, monkeypatch)
    assert "--out: " in err and "afile is a file, not a directory" in err
    err = _fail([*base, str(tmp_path / "missing" / "model.pt")], capsys, monkeypatch)
    assert "--out: directory does not exist" in err
    err = _fail([*base, str(_unwritable_dir(tmp_path) / "model.pt")], capsys, monkeypatch)
    assert "--out: cannot write into" in err


def test_report_outputs_are_checked_before_the_model_is_loaded(tmp_path, capsys, monkeypatch):
    # The model file does not exist either: the output check comes first, so the message is about --csv / --json.
    err = _fail(["report", "missing.pt", "--csv", str(tmp_path), "--quiet"], capsys, monkeypatch)
    assert "--csv: " in err and "is a directory" in err
    (tmp_path / "afile").write_text("x")
    err = _fail(["report", "missing.pt", "--json", str(tmp_path / "afile" / "r.json")], capsys, monkeypatch)
    assert "--json: " in err and "is a file, not a directory" in err


def test_compare_out_under_a_file_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import art_jacreg.compare

    def no_run(*args, **kwargs):
        raise AssertionError("the comparison started although --out is unusable")

    monkeypatch.setattr(art_jacreg.compare, "run_comparison", no_run)
    (tmp_path / "afile").write_text("x")
    err = _fail(["compare", "--out", str(tmp_path / "afile"), "--quiet"], capsys, monkeypatch)
    assert "art-jacreg compare: error: --out: " in err and "afile is a file, not a directory" in err
    err = _fail(["compare", "--out", str(tmp_path / "afile" / "res"), "--quiet"], capsys, monkeypatch)
    assert "--out: " in err and "is a file, not a directory, so" in err


def test_diverging_training_is_one_line_and_saves_nothing(tmp_path, tiny_npz, capsys):
    out = tmp_path / "model.pt"
    argv = ["train", "--data", str(tiny_npz), "--lr", "1e6", "--epochs", "2", "--batch-size", "32"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("art-jacreg train: error: FloatingPointError: Non-finite") and len(err.splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_train_writes_the_model_atomically(tmp_path, tiny_npz, capsys):
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous model")
    assert main(["train", "--data", str(tiny_npz), "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert "saved state_dict to" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # replaced, no temporary file left
    import torch

    assert "0.weight" in torch.load(out, weights_only=True)


def test_bad_data_files_are_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import numpy as np

    rgb = tmp_path / "rgb.npz"
    labels = np.zeros(20, np.int64)
    x_rgb = np.zeros((20, 3, 28, 28), np.uint8)
    np.savez(rgb, x_train=x_rgb, y_train=labels, x_test=np.zeros((5, 28, 28)), y_test=labels)
    err = _fail(["train", "--data", str(rgb), "--out", str(tmp_path / "m.pt")], capsys, monkeypatch)
    assert f"ValueError: `x_train` in {rgb} has shape (20, 3, 28, 28)" in err
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(rgb.read_bytes()[:300])
    err = _fail(["train", "--data", str(truncated), "--out", str(tmp_path / "m.pt")], capsys, monkeypatch)
    assert str(truncated) in err and "truncated or corrupt" in err and "allow_pickle" not in err
    empty_dir = tmp_path / "idx"
    empty_dir.mkdir()
    err = _fail(["train", "--data", str(empty_dir), "--out", str(tmp_path / "m.pt")], capsys, monkeypatch)
    assert "FileNotFoundError: `path` " in err and "has no train-images-idx3-ubyte[.gz] file" in err


def test_truncated_model_file_is_one_line(tmp_path, tiny_npz, capsys, monkeypatch):
    import torch

    from art_jacreg.models import mnist_cnn

    full = tmp_path / "full.pt"
    torch.save(mnist_cnn().state_dict(), full)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(full.read_bytes()[:1000])
    err = _fail(["certify", str(cut), "--data", str(tiny_npz)], capsys, monkeypatch)
    assert f"MODEL: cannot read {cut} as a torch state_dict" in err


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        __import__("zipfile").BadZipFile("File is not a zip file"),
        EOFError("Compressed file ended before the end-of-stream marker was reached"),
        FloatingPointError("Non-finite training loss"),
        ValueError("`eps` must be a finite number >= 0\nsecond line"),
        TypeError("`classifier` must be an instance of PyTorchClassifier"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_user_caused_failures_exit_2_with_one_line(error, capsys, monkeypatch):
    from art_jacreg import cli

    def fail(args):
        raise error

    monkeypatch.setitem(cli._COMMANDS, "certify", fail)
    assert main(["certify", "m.pt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"art-jacreg certify: error: {type(error).__name__}: ") and len(err.splitlines()) == 1


@pytest.mark.parametrize("error", [RuntimeError("bug"), KeyError("bug"), AttributeError("bug")], ids=repr)
def test_a_bug_in_the_package_keeps_its_traceback(error, monkeypatch):
    from art_jacreg import cli

    def fail(args):
        raise error

    monkeypatch.setitem(cli._COMMANDS, "certify", fail)
    with pytest.raises(type(error)):
        main(["certify", "m.pt"])
