"""Run a comparison: train every defence, evaluate it, cache its result, write the table and the plots."""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from art_jacreg._io import check_output_dir
from art_jacreg.compare.defences import DefenceSpec, TrainContext, get_defence, train_defence
from art_jacreg.compare.plots import make_plots
from art_jacreg.compare.protocol import EvalData, Protocol, evaluate_model, get_preset, load_data
from art_jacreg.compare.results import cache_path, config_hash, load_cached, save_cached, write_outputs

logger = logging.getLogger(__name__)

__all__ = ["ComparisonResult", "run_comparison", "default_out_dir"]


@dataclass
class ComparisonResult:
    """What :func:`run_comparison` returns.

    :ivar out_dir: The results folder.
    :ivar rows: One result dict per defence, in protocol order (``status`` is ``"ok"`` or ``"error"``).
    :ivar paths: Written files by kind (``json``, ``csv``, ``markdown`` and the plots).
    :ivar recomputed: Names of the defences computed in this call (the others were loaded from the cache).
    :ivar seconds: Wall-clock time of the call.
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    paths: dict[str, Path] = field(default_factory=dict)
    recomputed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, name: str) -> dict[str, Any]:
        """The result of one defence.

        :param name: Defence name.
        :return: Its result dict.
        :raises KeyError: If the defence was not part of the run.
        """
        for row in self.rows:
            if row["defence"] == name:
                return row
        raise KeyError(name)


def default_out_dir(protocol: Protocol) -> Path:
    """The folder a run writes to by default: ``./art-jacreg-results/<preset>`` (stable, so reruns resume).

    :param protocol: The protocol.
    :return: The path.
    """
    return Path.cwd() / "art-jacreg-results" / protocol.name


def _defence_config(spec: DefenceSpec, protocol: Protocol) -> dict[str, Any]:
    return {"defence": spec.config(), "protocol": protocol.evaluation_config()}


def _run_one(spec: DefenceSpec, protocol: Protocol, data: EvalData, verbose: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "defence": spec.name,
        "description": spec.description,
        "trainer": spec.trainer,
        "norm": spec.config()["norm"],
        "epochs": protocol.epochs,
        "status": "error",
        "stage": "train",
    }
    ctx = TrainContext(
        data.x_train,
        data.y_train,
        protocol.epochs,
        protocol.batch_size,
        protocol.lr,
        protocol.seed,
        protocol.train_eps(),
        verbose=False,
    )
    try:
        outcome = train_defence(spec, ctx)
        row.update(
            train_eps=outcome.train_eps,
            adaptations=outcome.adaptations,
            details=outcome.details,
            train_seconds=outcome.seconds,
            seconds_per_epoch=outcome.seconds / protocol.epochs,
            stage="evaluate",
        )
        row.update(evaluate_model(outcome.model, data, protocol, verbose=verbose))
        row["status"], row["stage"] = "ok", None
    except Exception as err:  # noqa: BLE001 - a failing defence becomes an error row, the run goes on
        logger.error("defence %s failed during %s: %s", spec.name, row["stage"], err)
        row["error"] = f"{type(err).__name__}: {err}"
        row["traceback"] = traceback.format_exc()
        from art_jacreg.compare.defences import ADAPTATIONS

        row.setdefault("adaptations", list(ADAPTATIONS.get(spec.trainer, [])))
    return row


def run_comparison(
    protocol: Protocol | str = "quick",
    out_dir: str | os.PathLike | None = None,
    defences: list[str] | tuple[str, ...] | None = None,
    resume: bool = True,
    quiet: bool = False,
    plots: bool = True,
    threads: int | None = 1,
) -> ComparisonResult:
    """Train and evaluate every defence of the protocol, with caching, and write the table and plots.

    :param protocol: A :class:`Protocol` or a preset name (``"quick"``, ``"full"``).
    :param out_dir: Results folder (default :func:`default_out_dir`); created if needed, and checked before any work
        (a file in its place, or an unwritable parent, raises ``ValueError``).
    :param defences: Override of ``protocol.defences`` (names from :func:`art_jacreg.compare.list_defences`).
    :param resume: Load the cached result of a defence whose configuration hash matches instead of recomputing it.
    :param quiet: No progress bars, only warnings and errors logged.
    :param plots: Draw the PNG plots.
    :param threads: torch intra-op threads during the run (restored afterwards); ``None`` leaves torch's setting.
        The default ``1`` is deliberate: the model is small, and on a machine whose cores are shared, torch's
        default OpenMP threads spin against each other (measured: an AutoAttack call 30 times slower with 2 threads
        than with 1 on 2 oversubscribed cores).
    :return: :class:`ComparisonResult`.
    :raises ValueError: For an unknown preset or defence name, or an ``out_dir`` that cannot be written.
    """
    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"`threads` must be None or an integer >= 1, got {threads!r}.")
        torch.set_num_threads(threads)
    try:
        return _run(protocol, out_dir, defences, resume, quiet, plots)
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    protocol: Protocol | str,
    out_dir: str | os.PathLike | None,
    defences: list[str] | tuple[str, ...] | None,
    resume: bool,
    quiet: bool,
    plots: bool,
) -> ComparisonResult:
    start = time.perf_counter()
    if isinstance(protocol, str):
        protocol = get_preset(protocol)
    if defences is not None:
        protocol = protocol.replace(defences=tuple(defences))
    specs = [get_defence(name) for name in protocol.defences]  # raises on unknown names before any work
    out = check_output_dir(out_dir if out_dir is not None else default_out_dir(protocol), "`out_dir`")
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(protocol)
    rows, recomputed = [], []
    bar = tqdm(specs, desc="defences", disable=quiet, unit="defence")
    for spec in bar:
        bar.set_postfix_str(spec.name)
        digest = config_hash(_defence_config(spec, protocol))
        path = cache_path(out, spec.name, digest)
        cached = load_cached(path) if resume else None
        if cached is not None:
            logger.info("%s: loaded from %s", spec.name, path)
            rows.append(cached)
            continue
        row = _run_one(spec, protocol, data, verbose=False)
        row.update(config_hash=digest, config=_defence_config(spec, protocol))
        if row["status"] == "ok":
            save_cached(path, row)
        rows.append(row)
        recomputed.append(spec.name)
        if not quiet:
            logger.info("%s: done (%s)", spec.name, row["status"])
    seconds = time.perf_counter() - start
    meta = {
        "preset": protocol.name,
        "protocol": protocol.evaluation_config(),
        "defences": list(protocol.defences),
        "data": data.source + f"; {len(data.x_train)} training and {len(data.x_test)} test digits",
        "total_seconds": seconds,
        "recomputed": len(recomputed),
        "cached": len(rows) - len(recomputed),
    }
    paths = write_outputs(out, rows, meta)
    if plots:
        paths.update(make_plots(out, rows, meta))
    return ComparisonResult(out, rows, paths, recomputed, time.perf_counter() - start)
