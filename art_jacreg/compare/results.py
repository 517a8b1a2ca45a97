"""Results I/O: one cached JSON per (defence, seed) keyed by a hash of its configuration, and the combined files.

A result is cached as ``<out_dir>/cache/<defence>-s<seed>-<hash>.json`` where the hash covers the defence's
configuration, the evaluation protocol (everything but the preset name, the defence list and the seed list), the
seed and :data:`CACHE_VERSION`. An interrupted run therefore resumes per (defence, seed): results whose file exists
are loaded, the others recomputed. Failed runs are not cached, so a rerun retries them. Every file is written
atomically (:mod:`art_jacreg._io`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from art_jacreg._io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_VERSION",
    "clean_json",
    "config_hash",
    "cache_path",
    "load_cached",
    "save_cached",
    "write_outputs",
    "to_markdown",
]

#: Bump when the meaning of a cached result changes, to invalidate old caches.
CACHE_VERSION = 2


def clean_json(value: Any) -> Any:
    """Replace non-finite floats by ``None`` and numpy scalars by Python ones, recursively (strict JSON).

    :param value: Any JSON-like value.
    :return: The cleaned value.
    """
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a JSON-serialisable configuration.

    :param config: The configuration.
    :return: 12 hex digits.
    """
    text = json.dumps({"version": CACHE_VERSION, **clean_json(config)}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def cache_path(out_dir: str | os.PathLike, name: str, digest: str, seed: int | None = None) -> Path:
    """Where the result of a (defence, seed) is cached.

    :param out_dir: The results folder.
    :param name: Defence name.
    :param digest: :func:`config_hash` of its configuration (seed included).
    :param seed: The training seed (``None``: the pre-seeds name ``<name>-<digest>.json``).
    :return: ``<out_dir>/cache/<name>-s<seed>-<digest>.json``.
    """
    stem = f"{name}-{digest}" if seed is None else f"{name}-s{seed}-{digest}"
    return Path(out_dir) / "cache" / f"{stem}.json"


def load_cached(path: str | os.PathLike) -> dict[str, Any] | None:
    """Load a cached result, or ``None`` if missing or unreadable (a truncated file is recomputed).

    :param path: The cache file.
    :return: The result dict or ``None``.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with path.open(encoding="utf-8") as handle:
            row = json.load(handle)
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable cache file %s: %s", path, err)
        return None
    return row if isinstance(row, dict) and row.get("status") == "ok" else None


def save_cached(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Write a result atomically (unique temporary file in the same folder, then renamed).

    :param path: The cache file.
    :param row: The result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, clean_json(row), indent=1, sort_keys=True)


def to_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The summary in markdown (see :func:`art_jacreg.compare.summary.summary_markdown`).

    :param rows: One result dict per (defence, seed).
    :param meta: Run metadata.
    :return: Markdown text.
    """
    from art_jacreg.compare.summary import summary_markdown

    return summary_markdown(rows, meta)


_CSV_FIELDS = [
    "defence",
    "model",
    "seed",
    "status",
    "norm",
    "train_eps",
    "seconds_per_epoch",
    "train_seconds",
    "clean_accuracy",
]


def _get(row: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(row, dict) or key not in row:
            return None
        row = row[key]
    return row


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat = {k: row.get(k) for k in _CSV_FIELDS}
    for kind in ("robust_accuracy", "certified_accuracy"):
        for norm, values in (row.get(kind) or {}).items():
            for eps, acc in values.items():
                flat[f"{kind}_l{norm}_{eps}"] = acc
    for norm, values in (row.get("standard_autoattack") or {}).items():
        flat[f"standard_autoattack_l{norm}_{values.get('eps'):g}"] = values.get("standard")
    for part in ("train", "test"):
        for key, value in (_get(row, "jacobian", part) or {}).items():
            if key != "n":
                flat[f"jacobian_{key}_{part}"] = value
    for gap, values in (row.get("gaps") or {}).items():
        flat[f"{gap}_loss_gap"] = values.get("loss_gap")
        flat[f"{gap}_accuracy_gap"] = values.get("accuracy_gap")
    flat["margin_bound"] = _get(row, "generalization", "margin_bound")
    flat["error"] = row.get("error")
    return clean_json(flat)


def write_outputs(out_dir: str | os.PathLike, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    """Write ``results.json`` (every (defence, seed) row and the aggregates), ``results.csv`` (one line per
    (defence, seed)), ``summary.md`` and ``headline.md`` into ``out_dir``, each atomically.

    :param out_dir: The results folder.
    :param rows: One result dict per (defence, seed).
    :param meta: Run metadata.
    :return: Paths by kind (``json``, ``csv``, ``markdown``, ``headline``).
    """
    from art_jacreg.compare.headline import aggregate_rows, headline_markdown

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "results.json",
        "csv": out / "results.csv",
        "markdown": out / "summary.md",
        "headline": out / "headline.md",
    }
    aggregates = [a.to_dict() for a in aggregate_rows(rows, meta)]
    payload = {"meta": meta, "results": rows, "aggregates": aggregates}
    atomic_write_json(paths["json"], clean_json(payload), indent=1, sort_keys=True)
    flat_rows = [_flat(row) for row in rows]
    fields = list(dict.fromkeys(k for flat in flat_rows for k in flat))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat_rows)
    atomic_write_text(paths["csv"], buffer.getvalue())
    atomic_write_text(paths["markdown"], to_markdown(rows, clean_json(meta)))
    atomic_write_text(paths["headline"], headline_markdown(rows, clean_json(meta)))
    return paths
