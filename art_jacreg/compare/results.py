"""Results I/O: one cached JSON per defence keyed by a hash of its configuration, the combined JSON/CSV and a
markdown summary table.

A result is cached as ``<out_dir>/cache/<defence>-<hash>.json`` where the hash covers the defence's configuration,
the evaluation protocol (everything but the preset name and defence list) and :data:`CACHE_VERSION`. An interrupted
run therefore resumes: defences whose file exists are loaded, the others recomputed. Failed defences are not cached,
so a rerun retries them.
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

__all__ = ["CACHE_VERSION", "config_hash", "cache_path", "load_cached", "save_cached", "write_outputs", "to_markdown"]

#: Bump when the meaning of a cached result changes, to invalidate old caches.
CACHE_VERSION = 1


def _clean(value: Any) -> Any:
    """Replace non-finite floats by ``None`` and numpy scalars by Python ones, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
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
    text = json.dumps({"version": CACHE_VERSION, **_clean(config)}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def cache_path(out_dir: str | os.PathLike, name: str, digest: str) -> Path:
    """Where a defence's result is cached.

    :param out_dir: The results folder.
    :param name: Defence name.
    :param digest: :func:`config_hash` of its configuration.
    :return: ``<out_dir>/cache/<name>-<digest>.json``.
    """
    return Path(out_dir) / "cache" / f"{name}-{digest}.json"


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
    """Write a result atomically (a temporary file with a unique name in the same folder, then renamed), so that
    concurrent runs into one folder never collide and a reader never sees a partial file.

    :param path: The cache file.
    :param row: The result.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, _clean(row), indent=1, sort_keys=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.2e}"
    return str(value)


def _get(row: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(row, dict) or key not in row:
            return None
        row = row[key]
    return row


def _norm_label(norm: str | None) -> str:
    return {"2": "l2", "inf": "l∞"}.get(norm or "", "—")


def to_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The summary table(s) in markdown.

    :param rows: One result dict per defence.
    :param meta: Run metadata (``protocol``, ``data``, ``total_seconds``).
    :return: Markdown text.
    """
    protocol = meta["protocol"]
    eps_l2, eps_inf = protocol["eps_l2"], protocol["eps_linf"]
    cert_l2, cert_inf = protocol["cert_eps_l2"], protocol["cert_eps_linf"]
    lines = [
        f"# Defence comparison ({meta.get('preset', 'custom')} preset)",
        "",
        f"Data: {meta.get('data', '?')}. Model `mnist_cnn` (seed {protocol['seed']}), Adam lr {protocol['lr']:g}, "
        f"batch {protocol['batch_size']}, {protocol['epochs']} epochs for every defence. Training eps: l2 "
        f"{protocol['train_eps_l2']:g}, l∞ {protocol['train_eps_linf']:g}. Attack: ART AutoAttack (APGD-CE + APGD-DLR, "
        f"{protocol['attack_iter']} iterations each) on {protocol['n_attack']} test points; certificates: "
        f"JacobianBoundReporter ({protocol['certify_method']}) on {protocol['n_certify']} test points.",
        "",
        "Attacked accuracy is an upper bound on the true robust accuracy; certified accuracy is a lower bound.",
        "",
        "## Accuracy and cost",
        "",
    ]
    head = ["defence", "trained against", "s/epoch", "train s", "clean"]
    head += [f"AA l2 {e:g}" for e in eps_l2] + [f"AA l∞ {e:g}" for e in eps_inf]
    head += [f"cert l2 {e:g}" for e in cert_l2] + [f"cert l∞ {e:g}" for e in cert_inf]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if row.get("norm") is None:
            against = "—"
        elif row.get("train_eps") is None:
            against = f"{_norm_label(row['norm'])} (no eps)"
        else:
            against = f"{_norm_label(row['norm'])} {row['train_eps']:g}"
        if row.get("status") != "ok":
            message = str(row.get("error", "")).replace("|", "/").splitlines()[0][:160] if row.get("error") else ""
            cells = [row["defence"], against, "–", "–", f"**error** ({row.get('stage', '?')}): {message}"]
            cells += [""] * (len(head) - len(cells))
        else:
            cells = [
                row["defence"],
                against,
                _fmt(row.get("seconds_per_epoch"), 1),
                _fmt(row.get("train_seconds"), 1),
                _fmt(row.get("clean_accuracy")),
            ]
            cells += [_fmt(_get(row, "robust_accuracy", "2", f"{e:g}")) for e in eps_l2]
            cells += [_fmt(_get(row, "robust_accuracy", "inf", f"{e:g}")) for e in eps_inf]
            cells += [_fmt(_get(row, "certified_accuracy", "2", f"{e:g}")) for e in cert_l2]
            cells += [_fmt(_get(row, "certified_accuracy", "inf", f"{e:g}")) for e in cert_inf]
        lines.append("| " + " | ".join(cells) + " |")
    ref2, refi = protocol["ref_eps_l2"], protocol["ref_eps_linf"]
    lines += [
        "",
        "## Jacobian norms and generalization",
        "",
        f"Gaps: loss gap = test − train (cross-entropy), accuracy gap = train − test; robust = under the attack at l2 "
        f"{ref2:g} / l∞ {refi:g} on {protocol['n_attack']} train and test points. ‖J‖ are means over "
        f"{protocol['n_jacobian']} points. BFT = Bartlett-Foster-Telgarsky margin-bound term R_A‖X‖_F/(γn) with γ the "
        "10% quantile of the positive training margins (log factors omitted); added to the fraction of training points "
        "below γ it bounds the test error, a number in [0, 1]: above 1 the bound is vacuous.",
        "",
    ]
    head2 = [
        "defence",
        "‖J‖_F train",
        "‖J‖_F test",
        "‖J‖₁,₁ train",
        "‖J‖₁,₁ test",
        "loss gap",
        "acc gap",
        f"rob. loss gap l2 {ref2:g}",
        f"rob. acc gap l2 {ref2:g}",
        f"rob. loss gap l∞ {refi:g}",
        f"rob. acc gap l∞ {refi:g}",
        "∏‖A‖₂",
        "BFT term",
    ]
    lines += ["| " + " | ".join(head2) + " |", "|" + "---|" * len(head2)]
    for row in rows:
        if row.get("status") != "ok":
            lines.append("| " + " | ".join([row["defence"], "error"] + [""] * (len(head2) - 2)) + " |")
            continue
        gen = row.get("generalization", {})
        bft = gen.get("margin_bound")
        if bft is None or not math.isfinite(bft):
            bft_text = "n/a (no positive margin): vacuous"
        else:
            bft_text = f"{bft:.3g}" + (" (vacuous)" if gen.get("vacuous") else "")
        cells = [row["defence"]]
        for key in ("frobenius", "l11"):
            cells += [_fmt(_get(row, "jacobian", part, key), 2) for part in ("train", "test")]
        cells += [_fmt(_get(row, "gaps", "standard", "loss_gap")), _fmt(_get(row, "gaps", "standard", "accuracy_gap"))]
        for key in ("robust_2", "robust_inf"):
            cells += [_fmt(_get(row, "gaps", key, "loss_gap")), _fmt(_get(row, "gaps", key, "accuracy_gap"))]
        cells += [_fmt(gen.get("spectral_product"), 1), bft_text]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Adaptations around ART (no ART code patched)", ""]
    for row in rows:
        details = ", ".join(f"{k}={v}" for k, v in sorted((row.get("details") or {}).items()))
        lines.append(f"- **{row['defence']}** ({row.get('description', '')}){': ' + details if details else ''}")
        lines += [f"  - {item}" for item in row.get("adaptations", [])]
    if meta.get("total_seconds") is not None:
        lines += [
            "",
            f"Total wall-clock time of this run: {meta['total_seconds']:.0f} s "
            f"({meta.get('recomputed', '?')} defences computed, {meta.get('cached', '?')} loaded from cache).",
        ]
    return "\n".join(lines) + "\n"


_CSV_FIELDS = ["defence", "status", "norm", "train_eps", "seconds_per_epoch", "train_seconds", "clean_accuracy"]


def write_outputs(out_dir: str | os.PathLike, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` and ``summary.md`` into ``out_dir``, each atomically.

    :param out_dir: The results folder.
    :param rows: One result dict per defence.
    :param meta: Run metadata.
    :return: Paths by kind (``json``, ``csv``, ``markdown``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "csv": out / "results.csv", "markdown": out / "summary.md"}
    atomic_write_json(paths["json"], _clean({"meta": meta, "results": rows}), indent=1, sort_keys=True)
    flat_rows = []
    for row in rows:
        flat = {k: row.get(k) for k in _CSV_FIELDS}
        for kind in ("robust_accuracy", "certified_accuracy"):
            for norm, values in (row.get(kind) or {}).items():
                for eps, acc in values.items():
                    flat[f"{kind}_l{norm}_{eps}"] = acc
        for part in ("train", "test"):
            for key, value in (_get(row, "jacobian", part) or {}).items():
                if key != "n":
                    flat[f"jacobian_{key}_{part}"] = value
        for gap, values in (row.get("gaps") or {}).items():
            flat[f"{gap}_loss_gap"] = values.get("loss_gap")
            flat[f"{gap}_accuracy_gap"] = values.get("accuracy_gap")
        flat["margin_bound"] = _get(row, "generalization", "margin_bound")
        flat["error"] = row.get("error")
        flat_rows.append(_clean(flat))
    fields = list(dict.fromkeys(k for flat in flat_rows for k in flat))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(flat_rows)
    atomic_write_text(paths["csv"], buffer.getvalue())
    atomic_write_text(paths["markdown"], to_markdown(rows, _clean(meta)))
    return paths
