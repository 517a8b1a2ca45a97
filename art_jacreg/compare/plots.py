"""Plots of a comparison run (matplotlib, Agg backend, PNG files, each written atomically). Points are means over
the seeds, error bars one standard deviation.

* ``robust_accuracy_vs_eps.png``: fast-pair AutoAttack accuracy against eps per defence, l2 and l-inf panels;
* ``robust_accuracy_vs_training_time.png``: the Pareto plot of each threat model (one panel per headline eps):
  seconds per epoch (x, log) against robust accuracy (y), the non-dominated defences joined by a line;
* ``certified_accuracy_vs_training_time.png``: certified accuracy at the certified headline eps against cost;
* ``jacobian_norm_vs_robust_gap.png``: mean test Jacobian norm against the robust generalization gap.

Points are numbered and the numbers explained in a legend; the numbers are placed by a greedy search over offsets
around each point that avoids every label already placed and every marker (:func:`place_labels`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from art_jacreg._io import atomic_savefig
from art_jacreg._validate import norm_label
from art_jacreg.compare.headline import DefenceAggregate, aggregate_rows
from art_jacreg.compare.stats import pareto_front

__all__ = ["make_plots", "place_labels", "overlaps"]

_OFFSETS = [
    (5, 4),
    (5, -11),
    (-11, 4),
    (-11, -11),
    (5, 14),
    (-11, 14),
    (5, -21),
    (-11, -21),
    (15, -4),
    (-21, -4),
    (5, 24),
    (5, -31),
    (-21, 14),
    (15, 14),
    (-21, -21),
    (15, -21),
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether two boxes ``(x0, y0, x1, y1)`` intersect.

    :param a: First box.
    :param b: Second box.
    :return: ``True`` when they share an interior point.
    """
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(ax: Any, points: list[tuple[float, float]], texts: list[str], fontsize: float = 7) -> list[Any]:
    """Annotate ``points`` (data coordinates) with ``texts`` so that no two labels, and no label and marker, overlap
    when an offset in :data:`_OFFSETS` allows it (else the offset with the fewest collisions is taken).

    :param ax: The axes (its limits must be final).
    :param points: Anchor points.
    :param texts: Labels.
    :param fontsize: Font size.
    :return: The annotations.
    """
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    markers = []
    for x, y in points:
        px, py = ax.transData.transform((x, y))
        markers.append((px - 3, py - 3, px + 3, py + 3))
    frame = ax.get_window_extent(renderer)
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for (x, y), text in zip(points, texts):
        ann = ax.annotate(text, (x, y), xytext=_OFFSETS[0], textcoords="offset points", fontsize=fontsize)
        best, best_hits = _OFFSETS[0], None
        for offset in _OFFSETS:
            ann.set_position(offset)
            ext = ann.get_window_extent(renderer)
            box = (ext.x0, ext.y0, ext.x1, ext.y1)
            hits = sum(overlaps(box, other) for other in placed + markers)
            hits += int(box[0] < frame.x0 or box[1] < frame.y0 or box[2] > frame.x1 or box[3] > frame.y1)
            if best_hits is None or hits < best_hits:
                best, best_hits, best_box = offset, hits, box
            if hits == 0:
                break
        ann.set_position(best)
        placed.append(best_box)
        out.append(ann)
    return out


def _style(agg: DefenceAggregate) -> dict[str, Any]:
    if agg.trainer in ("jr", "certified"):
        return {"marker": "o", "color": "tab:blue" if agg.trainer == "jr" else "tab:green"}
    if agg.trainer == "plain":
        return {"marker": "x", "color": "black"}
    return {"marker": "s", "color": "tab:red"}


def _mean_std(agg: DefenceAggregate, path: str) -> tuple[float | None, float]:
    est = agg.get(path)
    if est is None:
        return None, 0.0
    return est.mean, (est.std if est.n > 1 and est.std == est.std else 0.0)


def _cost_panel(ax: Any, aggs: list[DefenceAggregate], path: str, ylabel: str, title: str, front: bool) -> None:
    pts, names, numbers = [], [], []
    for number, agg in enumerate(aggs, start=1):
        x, xs = _mean_std(agg, "seconds_per_epoch")
        y, ys = _mean_std(agg, path)
        if x is None or y is None:
            continue
        style = _style(agg)
        ax.errorbar(x, y, xerr=xs, yerr=ys, fmt=style["marker"], color=style["color"], ms=5, capsize=2, lw=0.8)
        pts.append((x, y))
        names.append(agg.defence)
        numbers.append(str(number))
    if front and pts:
        idx = pareto_front(pts)
        ax.plot(
            [pts[i][0] for i in idx],
            [pts[i][1] for i in idx],
            "-",
            color="tab:gray",
            lw=1,
            zorder=0,
            label="non-dominated",
        )
        ax.legend(fontsize=7, loc="best")
    _log_axis(ax)
    ax.set_xlabel("training seconds per epoch (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    place_labels(ax, pts, numbers)


def _log_axis(ax: Any) -> None:
    """Log x axis with plain-number ticks at 1, 2 and 5 per decade (no overlapping 3x10^0 labels)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _key_text(aggs: list[DefenceAggregate]) -> str:
    return "   ".join(f"{i}: {a.defence}" for i, a in enumerate(aggs, start=1))


def _cost_figure(
    plt: Any, aggs: list[DefenceAggregate], panels: list[tuple[str, str, str]], front: bool, path: Path
) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(12, 5.2))
    for ax, (metric, ylabel, title) in zip(axes, panels):
        _cost_panel(ax, aggs, metric, ylabel, title, front)
    fig.text(0.01, 0.01, _key_text(aggs), fontsize=7, wrap=True, va="bottom")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def _robust_vs_eps(plt: Any, aggs: list[DefenceAggregate], protocol: dict[str, Any], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, sweep in ((axes[0], "2", protocol["eps_l2"]), (axes[1], "inf", protocol["eps_linf"])):
        for agg in aggs:
            ys = [_mean_std(agg, "clean_accuracy")[0]] + [
                _mean_std(agg, f"robust_accuracy/{key}/{e:g}")[0] for e in sweep
            ]
            if any(v is None for v in ys):
                continue
            style = _style(agg)
            ax.plot(
                [0.0, *sweep],
                ys,
                label=agg.defence,
                marker=style["marker"],
                lw=1,
                linestyle="-" if agg.trainer == "jr" else "--",
            )
        ax.set_xlabel(f"{norm_label(key)} eps (pixels in [0, 1])")
        ax.set_ylabel("accuracy under AutoAttack (APGD-CE + DLR), mean over seeds")
        ax.set_title(f"Robust accuracy, {norm_label(key)}")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def _jacobian_vs_gap(plt: Any, rows: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, jac_key, jac_label in ((axes[0], "2", "frobenius", "‖J‖_F"), (axes[1], "inf", "l11", "‖J‖₁,₁")):
        for row in rows:
            gap = (row.get("gaps") or {}).get(f"robust_{key}") or {}
            jac = ((row.get("jacobian") or {}).get("test") or {}).get(jac_key)
            if jac is None or gap.get("loss_gap") is None:
                continue
            ax.scatter(jac, gap["loss_gap"], s=12, color="tab:blue" if row.get("trainer") == "jr" else "tab:red")
        ax.set_xscale("log")
        ax.set_xlabel(f"mean test Jacobian norm ({jac_label}, log scale)")
        ax.set_ylabel("robust loss gap (test − train)")
        ax.set_title(
            f"Jacobian norm vs robust generalization gap ({norm_label(key)}), every seed (blue: JR)", fontsize=9
        )
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def make_plots(out_dir: str | os.PathLike, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    """Draw the four plots into ``out_dir`` (failed runs are left out), each file written atomically.

    :param out_dir: The results folder.
    :param rows: Result dicts, one per (defence, seed).
    :param meta: Run metadata (protocol and headline eps).
    :return: Paths by plot name.
    """
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    p = meta["protocol"]
    aggs = [a for a in aggregate_rows(rows, meta) if a.seeds]
    ok = [r for r in rows if r.get("status") == "ok"]
    paths = {
        "robust_vs_eps": out / "robust_accuracy_vs_eps.png",
        "robust_vs_time": out / "robust_accuracy_vs_training_time.png",
        "certified_vs_time": out / "certified_accuracy_vs_training_time.png",
        "jacobian_vs_gap": out / "jacobian_norm_vs_robust_gap.png",
    }
    _robust_vs_eps(plt, aggs, p, paths["robust_vs_eps"])
    robust = [
        (
            f"robust_accuracy/{k}/{e:g}",
            f"accuracy under AA-fast, {norm_label(k)} {e:g}",
            f"Pareto: cost vs robustness, {norm_label(k)} {e:g}",
        )
        for k, e in (("2", p["headline_eps_l2"]), ("inf", p["headline_eps_linf"]))
    ]
    _cost_figure(plt, aggs, robust, True, paths["robust_vs_time"])
    certified = [
        (
            f"certified_accuracy/{k}/{e:g}",
            f"certified accuracy, {norm_label(k)} {e:g}",
            f"Certified accuracy vs cost, {norm_label(k)} {e:g}",
        )
        for k, e in (("2", p["headline_cert_l2"]), ("inf", p["headline_cert_linf"]))
    ]
    _cost_figure(plt, aggs, certified, True, paths["certified_vs_time"])
    _jacobian_vs_gap(plt, ok, paths["jacobian_vs_gap"])
    return paths
