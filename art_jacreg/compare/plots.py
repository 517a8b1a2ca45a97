"""Plots of a comparison run (matplotlib, Agg backend, PNG files).

* ``robust_accuracy_vs_eps.png``: AutoAttack accuracy against eps per defence, l2 and l-inf panels;
* ``robust_accuracy_vs_training_time.png``: robust accuracy at the reference eps against training seconds;
* ``jacobian_norm_vs_robust_gap.png``: mean test Jacobian norm against the robust generalization gap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from art_jacreg._io import atomic_savefig

__all__ = ["make_plots"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row.get("status") == "ok"]


def _label(row: dict[str, Any]) -> str:
    return row["defence"]


def _style(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("trainer") == "jr":
        return {"linestyle": "-", "marker": "o"}
    if row.get("trainer") == "plain":
        return {"linestyle": ":", "marker": "x", "color": "black"}
    return {"linestyle": "--", "marker": "s"}


def _robust_vs_eps(plt: Any, rows: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "2", "l2"), (axes[1], "inf", "l∞")):
        for row in rows:
            values = row["robust_accuracy"].get(key, {})
            eps = sorted(values, key=float)
            xs = [0.0, *(float(e) for e in eps)]
            ys = [row["clean_accuracy"], *(values[e] for e in eps)]
            ax.plot(xs, ys, label=_label(row), **_style(row))
        ax.set_xlabel(f"{title} eps (pixels in [0, 1])")
        ax.set_ylabel("accuracy under AutoAttack (APGD-CE + DLR)")
        ax.set_title(f"Robust accuracy, {title}")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def _robust_vs_time(plt: Any, rows: list[dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    protocol = meta["protocol"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, ref, title in (
        (axes[0], "2", protocol["ref_eps_l2"], "l2"),
        (axes[1], "inf", protocol["ref_eps_linf"], "l∞"),
    ):
        for row in rows:
            acc = row["robust_accuracy"].get(key, {}).get(f"{ref:g}")
            if acc is None or row.get("train_seconds") is None:
                continue
            style = _style(row)
            ax.scatter(row["train_seconds"], acc, marker=style["marker"], color=style.get("color"), label=_label(row))
            ax.annotate(
                row["defence"], (row["train_seconds"], acc), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_xscale("log")
        ax.set_xlabel("training time (s, log scale)")
        ax.set_ylabel(f"accuracy under AutoAttack, {title} eps {ref:g}")
        ax.set_title(f"Robustness vs training cost ({title})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def _jacobian_vs_gap(plt: Any, rows: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, gap_key, jac_key, title in (
        (axes[0], "robust_2", "frobenius", "l2, ‖J‖_F"),
        (axes[1], "robust_inf", "l11", "l∞, ‖J‖₁,₁"),
    ):
        for row in rows:
            gap = row.get("gaps", {}).get(gap_key)
            jac = row.get("jacobian", {}).get("test", {}).get(jac_key)
            if gap is None or jac is None or gap.get("loss_gap") is None:
                continue
            style = _style(row)
            ax.scatter(jac, gap["loss_gap"], marker=style["marker"], color=style.get("color"))
            ax.annotate(row["defence"], (jac, gap["loss_gap"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(f"mean test Jacobian norm ({title.split(', ')[1]}, log scale)")
        ax.set_ylabel("robust loss gap (test − train)")
        ax.set_title(f"Jacobian norm vs robust generalization gap ({title.split(',')[0]})")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)


def make_plots(out_dir: str | os.PathLike, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    """Draw the three plots into ``out_dir`` (failed defences are left out), each file written atomically.

    :param out_dir: The results folder.
    :param rows: Result dicts.
    :param meta: Run metadata (for the reference eps).
    :return: Paths by plot name.
    """
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ok = _ok(rows)
    paths = {
        "robust_vs_eps": out / "robust_accuracy_vs_eps.png",
        "robust_vs_time": out / "robust_accuracy_vs_training_time.png",
        "jacobian_vs_gap": out / "jacobian_norm_vs_robust_gap.png",
    }
    _robust_vs_eps(plt, ok, paths["robust_vs_eps"])
    _robust_vs_time(plt, ok, meta, paths["robust_vs_time"])
    _jacobian_vs_gap(plt, ok, paths["jacobian_vs_gap"])
    return paths
