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
