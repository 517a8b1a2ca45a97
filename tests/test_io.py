"""Atomic writes: concurrent writers never collide, a failing write leaves the old file and no temporary file."""

from __future__ import annotations

import json
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from art_jacreg._io import (
    atomic_open,
    atomic_savefig,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
    check_output_file,
)
from art_jacreg.compare.results import load_cached, save_cached


def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder no file can be created in: a read-only folder, or /proc where permission bits do not stop root."""
    folder = tmp_path / "ro"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o500)
    try:
        (folder / "probe").touch()
    except OSError:
        return folder
    (folder / "probe").unlink()
    return Path("/proc")


def _payload(i: int) -> dict:
    return {"writer": i, "status": "ok", "values": list(range(200))}


def test_concurrent_cache_writes_never_collide_and_leave_a_complete_file(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "plain-0123456789ab.json"
    errors: list[BaseException] = []
    stop = threading.Event()
    seen: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            if path.exists():
                row = load_cached(path)  # None would mean a partial or unreadable file
                if row is None:
                    errors.append(AssertionError("reader saw a partial cache file"))
                else:
                    seen.append(row["writer"])

    watcher = threading.Thread(target=reader)
    watcher.start()
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(save_cached, path, _payload(i)) for i in range(150)]
        for future in futures:
            try:
                future.result()
            except BaseException as err:  # noqa: BLE001 - collected and asserted below
                errors.append(err)
    stop.set()
    watcher.join()
    assert errors == []
    final = json.loads(path.read_text(encoding="utf-8"))
    assert final["values"] == list(range(200)) and 0 <= final["writer"] < 150
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left behind
    assert seen  # the reader really read while the writers wrote


def test_concurrent_processes_write_one_path(tmp_path: Path) -> None:
    import multiprocessing

    path = tmp_path / "results.json"
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        pool.starmap(atomic_write_json, [(str(path), _payload(i)) for i in range(150)])
    assert json.loads(path.read_text())["values"] == list(range(200))
    assert os.listdir(tmp_path) == ["results.json"]


@pytest.mark.parametrize(
    "write",
    [
        lambda p: atomic_write_json(p, {"bad": object()}),  # not serialisable
        lambda p: atomic_torch_save({"f": lambda: 0}, p),  # not picklable
        lambda p: atomic_write_text(p, "\ud800"),  # not encodable
    ],
    ids=["json", "torch", "text"],
)
def test_failing_write_keeps_old_file_and_leaves_no_temp_file(tmp_path: Path, write) -> None:
    path = tmp_path / "out.dat"
    path.write_text("old content")
    with pytest.raises(Exception):  # noqa: B017 - each writer raises its own type
        write(path)
    assert path.read_text() == "old content"
    assert os.listdir(tmp_path) == ["out.dat"]


def test_exception_inside_atomic_open_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    atomic_write_bytes(path, b"first")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_open(path, "wb") as handle:
            handle.write(b"half of the sec")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["model.pt"]
    with pytest.raises(ValueError, match="`mode`"):
        with atomic_open(path, "a"):
            pass


def test_written_files_get_ordinary_permissions_and_round_trip(tmp_path: Path) -> None:
    import torch

    umask = os.umask(0o022)
    os.umask(umask)
    atomic_torch_save({"w": torch.arange(3.0)}, tmp_path / "m.pt")
    assert torch.equal(torch.load(tmp_path / "m.pt", weights_only=True)["w"], torch.arange(3.0))
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0o600

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot(np.arange(3))
    atomic_savefig(fig, tmp_path / "p.png", dpi=50)
    plt.close(fig)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["m.pt", "p.png"]


def test_check_output_file_and_dir(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    assert check_output_file(tmp_path / "new.pt", "--out") == tmp_path / "new.pt"
    with pytest.raises(ValueError, match=r"^--out: .* is a directory; give a file name$"):
        check_output_file(tmp_path, "--out")
    with pytest.raises(ValueError, match=r"^--csv: .*afile is a file, not a directory"):
        check_output_file(tmp_path / "afile" / "r.csv", "--csv")
    with pytest.raises(ValueError, match=r"^--json: directory does not exist"):
        check_output_file(tmp_path / "no" / "r.json", "--json")
    with pytest.raises(ValueError, match=r"^--out: cannot write into"):
        check_output_file(_unwritable_dir(tmp_path) / "model.pt", "--out")

    assert check_output_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checked, not created
    with pytest.raises(ValueError, match=r"afile is a file, not a directory$"):
        check_output_dir(tmp_path / "afile", "--out")
    with pytest.raises(ValueError, match=r"afile is a file, not a directory, so"):
        check_output_dir(tmp_path / "afile" / "sub", "--out")
    with pytest.raises(ValueError, match=r"^--out: cannot write into"):
        check_output_dir(_unwritable_dir(tmp_path) / "results", "--out")


def _bound_report():
    from art_jacreg.bound_report import BoundReport

    n = 3
    return BoundReport(
        label=np.arange(n),
        prediction=np.arange(n),
        loss=np.full(n, 0.1),
        first_order_loss=np.full(n, 0.2),
        jacobian_surrogate_loss=np.full(n, 0.3),
        certified_loss_bound=np.array([0.4, np.inf, 0.9]),
        certified=np.array([True, False, False]),
        certified_radius=np.array([0.5, 0.0, 0.0]),
        attack_loss=np.full(n, 0.15),
        attack_success=np.zeros(n, bool),
        attack_prediction=np.arange(n),
        eps=0.1,
        norm=2.0,
        method="interval",
        attack="apgd",
    )


def test_bound_report_files_are_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from art_jacreg import bound_report
    from art_jacreg.bound_report import BoundReport

    report = _bound_report()
    report.to_csv(tmp_path / "r.csv")
    report.to_json(tmp_path / "r.json")
    assert BoundReport.from_csv(tmp_path / "r.csv") == report == BoundReport.from_json(tmp_path / "r.json")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_dumps(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bound_report.json, "dumps", broken_dumps)  # fails half-way through writing
    for write in (report.to_csv, report.to_json):
        with pytest.raises(OSError, match="No space left"):
            write(tmp_path / ("r.csv" if write == report.to_csv else "r.json"))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files intact, no temporary file


def test_report_module_is_a_deprecated_alias_of_bound_report() -> None:
    import importlib
    import sys

    from art_jacreg import bound_report

    sys.modules.pop("art_jacreg.report", None)
    with pytest.warns(DeprecationWarning, match="art_jacreg.bound_report"):
        old = importlib.import_module("art_jacreg.report")
    assert old.BoundReport is bound_report.BoundReport and old.COLUMN_KINDS is bound_report.COLUMN_KINDS
    from art_jacreg.reporter import BoundReport

    assert BoundReport is bound_report.BoundReport
