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
from art_jacreg.compare.evaluation import EvalData, evaluate_model, load_data
from art_jacreg.compare.plots import make_plots
from art_jacreg.compare.protocol import Protocol, get_preset
from art_jacreg.compare.registry import ADAPTATIONS, SETTINGS, DefenceSpec, get_defence
from art_jacreg.compare.results import cache_path, config_hash, load_cached, save_cached, write_outputs
from art_jacreg.compare.training import TrainContext, train_defence

logger = logging.getLogger(__name__)

__all__ = ["ComparisonResult", "run_comparison", "default_out_dir"]


@dataclass
class ComparisonResult:
    """What :func:`run_comparison` returns.

    :ivar out_dir: The results folder.
    :ivar rows: One result dict per (defence, seed), in protocol order (``status`` is ``"ok"`` or ``"error"``).
    :ivar paths: Written files by kind (``json``, ``csv``, ``markdown``, ``headline`` and the plots).
    :ivar recomputed: Names of the defences with at least one seed computed in this call (the others were loaded
        from the cache); :attr:`recomputed_runs` lists the (defence, seed) pairs.
    :ivar seconds: Wall-clock time of the call.
    """

    out_dir: Path
    rows: list[dict[str, Any]]
    paths: dict[str, Path] = field(default_factory=dict)
    recomputed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    recomputed_runs: list[tuple[str, int]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def row(self, name: str, seed: int | None = None) -> dict[str, Any]:
        """The result of one defence for one seed.

        :param name: Defence name.
        :param seed: Training seed (default: the first seed run).
        :return: Its result dict.
        :raises KeyError: If the defence (or seed) was not part of the run.
        """
        for row in self.rows:
            if row["defence"] == name and (seed is None or row.get("seed") == seed):
                return row
        raise KeyError(name if seed is None else (name, seed))

    def headline(self) -> str:
        """The headline table as plain text (what ``art-jacreg compare`` prints).

        :return: The text.
        """
        from art_jacreg.compare.headline import headline_text

        return headline_text(self.rows, self.meta)


def default_out_dir(protocol: Protocol) -> Path:
    """The folder a run writes to by default: ``./art-jacreg-results/<preset>/<model>`` (stable, so reruns resume).

    :param protocol: The protocol.
    :return: The path.
    """
    return Path.cwd() / "art-jacreg-results" / protocol.name / protocol.model


def _defence_config(spec: DefenceSpec, protocol: Protocol, seed: int) -> dict[str, Any]:
    return {"defence": spec.config(), "protocol": protocol.evaluation_config(), "seed": seed}


def _run_one(spec: DefenceSpec, protocol: Protocol, data: EvalData, seed: int, verbose: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "defence": spec.name,
        "description": spec.description,
        "trainer": spec.trainer,
        "norm": spec.config()["norm"],
        "model": protocol.model,
        "seed": seed,
        "epochs": protocol.epochs,
        "settings": SETTINGS.get(spec.trainer, ""),
        "status": "error",
        "stage": "train",
    }
    ctx = TrainContext(
        data.x_train,
        data.y_train,
        protocol.epochs,
        protocol.batch_size,
        protocol.lr,
        seed,
        protocol.train_eps(),
        verbose=False,
        model=protocol.model,
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
        row.update(evaluate_model(outcome.model, data, protocol, verbose=verbose, seed=seed))
        row["status"], row["stage"] = "ok", None
    except Exception as err:  # noqa: BLE001 - a failing defence becomes an error row, the run goes on
        logger.error("defence %s failed during %s: %s", spec.name, row["stage"], err)
        row["error"] = f"{type(err).__name__}: {err}"
        row["traceback"] = traceback.format_exc()
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
    :param resume: Load the cached result of a (defence, seed) whose configuration hash matches instead of
        recomputing it.
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
    rows, runs = [], []
    # Seed-major order: a partial (interrupted) run holds every defence at the first seed before any second seed.
    jobs = [(spec, seed) for seed in protocol.seeds for spec in specs]
    bar = tqdm(jobs, desc="defences x seeds", disable=quiet, unit="run")
    for spec, seed in bar:
        bar.set_postfix_str(f"{spec.name} seed {seed}")
        config = _defence_config(spec, protocol, seed)
        digest = config_hash(config)
        path = cache_path(out, spec.name, digest, seed)
        cached = load_cached(path) if resume else None
        if cached is not None:
            logger.info("%s seed %d: loaded from %s", spec.name, seed, path)
            rows.append(cached)
            continue
        row = _run_one(spec, protocol, data, seed, verbose=False)
        row.update(config_hash=digest, config=config)
        if row["status"] == "ok":
            save_cached(path, row)
        rows.append(row)
        runs.append((spec.name, seed))
        logger.info("%s seed %d: done (%s)", spec.name, seed, row["status"])
    order = {spec.name: i for i, spec in enumerate(specs)}
    rows.sort(key=lambda row: (order.get(row["defence"], len(order)), row.get("seed", 0)))
    seconds = time.perf_counter() - start
    meta = {
        "preset": protocol.name,
        "protocol": {**protocol.evaluation_config(), "seeds": list(protocol.seeds)},
        "defences": list(protocol.defences),
        "seeds": list(protocol.seeds),
        "data": data.source + f"; {len(data.x_train)} training and {len(data.x_test)} test digits",
        "total_seconds": seconds,
        "recomputed": len(runs),
        "cached": len(rows) - len(runs),
    }
    paths = write_outputs(out, rows, meta)
    if plots:
        paths.update(make_plots(out, rows, meta))
    recomputed = list(dict.fromkeys(name for name, _ in runs))
    return ComparisonResult(out, rows, paths, recomputed, time.perf_counter() - start, runs, meta)
