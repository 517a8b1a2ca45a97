"""The markdown summary of a run: protocol, headline table, findings that respect the noise rule (Pareto fronts, JR
against ART's trainers, the standard AutoAttack's gap), the full accuracy tables (mean ± std over seeds), Jacobian
norms and generalization gaps, and the adaptations and settings of every defence.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from art_jacreg._validate import norm_label
from art_jacreg.compare.headline import DefenceAggregate, against, aggregate_rows, headline_markdown
from art_jacreg.compare.stats import NOISE_SE_MULTIPLIER, compare, pareto_front

__all__ = ["summary_markdown", "findings", "standard_gap", "recommendations", "CHEAP_FRACTION"]

#: "Cheapest robust" is the cheapest defence whose mean robust accuracy is at least this fraction of the best one's.
CHEAP_FRACTION = 0.8


def _cell(agg: DefenceAggregate, path: str, digits: int = 3) -> str:
    value = agg.get(path)
    return value.text(digits) if value is not None else "–"


def _table(header: list[str], cells: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(c) + " |" for c in cells)]


def standard_gap(entry: dict[str, Any]) -> tuple[float, float, bool]:
    """Gap between the fast pair and the standard version on the same points, its noise, and whether it counts.

    The ``k`` points only the standard version broke give a paired difference ``d = k / n`` with standard error
    ``sqrt(d (1 - d) / n)``; the gap is reported when ``d > 2·se``.

    :param entry: One ``standard_autoattack`` entry of a row.
    :return: ``(gap, se, outside_noise)``.
    """
    n, k = entry["n"], entry["extra_broken"]
    gap = k / n if n else 0.0
    se = math.sqrt(gap * (1 - gap) / n) if n else math.nan
    return gap, se, n > 0 and gap > NOISE_SE_MULTIPLIER * se


def findings(aggs: list[DefenceAggregate], protocol: dict[str, Any]) -> list[str]:
    """Plain-language findings (markdown bullet lines), each difference called only outside the noise.

    :param aggs: Aggregated defences.
    :param protocol: ``meta["protocol"]``.
    :return: Lines.
    """
    ok = [a for a in aggs if a.seeds and a.get("seconds_per_epoch") is not None]
    lines = []
    for key, eps in (("2", protocol["headline_eps_l2"]), ("inf", protocol["headline_eps_linf"])):
        path = f"robust_accuracy/{key}/{eps:g}"
        usable = [a for a in ok if a.get(path) is not None]
        front = pareto_front([(a.require("seconds_per_epoch").mean, a.require(path).mean) for a in usable])
        names = ", ".join(f"`{usable[i].defence}` ({usable[i].require(path).mean:.3f})" for i in front)
        lines.append(f"- **Pareto front, {norm_label(key)} {eps:g}** (s/epoch against AA-fast, means): {names}.")
        jr = [a for a in usable if a.trainer == "jr"]
        if not jr:
            continue
        best = max(jr, key=lambda a: a.require(path).mean)
        dominating = [
            a.defence
            for a in usable
            if a.trainer not in ("jr", "plain")
            and compare(a.get(path), best.get(path)) == ">"
            and compare(a.get("clean_accuracy"), best.get("clean_accuracy")) != "<"
            and a.require("seconds_per_epoch").mean <= best.require("seconds_per_epoch").mean
        ]
        if best.require(path).n < 2:
            above = [
                a.defence
                for a in usable
                if a.trainer not in ("jr", "plain")
                and a.require(path).mean > best.require(path).mean
                and a.require("clean_accuracy").mean >= best.require("clean_accuracy").mean
                and a.require("seconds_per_epoch").mean <= best.require("seconds_per_epoch").mean
            ]
            names = ", ".join(f"`{d}`" for d in above) or "none"
            verdict = f"one seed, so no difference is called; on these single values it is dominated by: {names}"
        elif dominating:
            verdict = (
                f"dominated outside the noise by {', '.join(f'`{d}`' for d in dominating)} (more robust, no less "
                "accurate clean, no slower)"
            )
        else:
            verdict = "not dominated outside the noise by any ART trainer (robust accuracy, clean accuracy, s/epoch)"
        lines.append(f"- Best JR row at {norm_label(key)} {eps:g}: `{best.defence}` ({_cell(best, path)}): {verdict}.")
    for agg in ok:
        for key, entry in sorted(agg.standard.items()):
            gap, se, counts = standard_gap(entry)
            if counts:
                lines.append(
                    f"- The fast pair overestimates `{agg.defence}` at {norm_label(key)} {entry['eps']:g}: "
                    f"{entry['fast']:.3f} against {entry['standard']:.3f} under the standard version "
                    f"(gap {gap:.3f} ± {se:.3f}, {entry['extra_broken']} of {entry['n']} digits)."
                )
    if any(agg.standard for agg in ok) and not any(standard_gap(e)[2] for a in ok for e in a.standard.values()):
        lines.append("- The standard AutoAttack broke no more digits than the fast pair beyond the noise.")
    return lines


def recommendations(aggs: list[DefenceAggregate], protocol: dict[str, Any]) -> list[str]:
    """Which defence to pick for which goal, read off the means by stated rules (markdown bullet lines).

    * most robust: the highest mean accuracy under the fast pair at the headline eps (ties within the noise listed);
    * cheapest robust: the lowest s/epoch among defences reaching :data:`CHEAP_FRACTION` of that accuracy;
    * certifiable: the highest mean certified accuracy at the certified headline eps.

    :param aggs: Aggregated defences.
    :param protocol: ``meta["protocol"]``.
    :return: Lines.
    """
    ok = [a for a in aggs if a.seeds and a.get("seconds_per_epoch") is not None]
    lines = []
    for key, eps, cert in (
        ("2", protocol["headline_eps_l2"], protocol["headline_cert_l2"]),
        ("inf", protocol["headline_eps_linf"], protocol["headline_cert_linf"]),
    ):
        path, cpath, label = f"robust_accuracy/{key}/{eps:g}", f"certified_accuracy/{key}/{cert:g}", norm_label(key)
        usable = [a for a in ok if a.get(path) is not None]
        if not usable:
            continue
        best = max(usable, key=lambda a: a.require(path).mean)
        ties = [a.defence for a in usable if a is not best and compare(a.get(path), best.get(path)) == "≈"]
        tie_text = (
            f" (within the noise: {', '.join(f'`{t}`' for t in ties)})" if ties and best.require(path).n > 1 else ""
        )
        cheap = min(
            (a for a in usable if a.require(path).mean >= CHEAP_FRACTION * best.require(path).mean),
            key=lambda a: a.require("seconds_per_epoch").mean,
        )
        lines.append(
            f"- **Most robust at {label} {eps:g}:** `{best.defence}` ({_cell(best, path)}, clean "
            f"{_cell(best, 'clean_accuracy')}){tie_text}."
        )
        lines.append(
            f"- **Cheapest robust at {label} {eps:g}:** `{cheap.defence}` ({_cell(cheap, path)}, clean "
            f"{_cell(cheap, 'clean_accuracy')}, at "
            f"{_cell(cheap, 'seconds_per_epoch', 2)} s/epoch; the cheapest with at least {CHEAP_FRACTION:.0%} of the "
            "best accuracy)."
        )
        certs = [a for a in ok if a.get(cpath) is not None]
        if certs:
            top = max(certs, key=lambda a: a.require(cpath).mean)
            lines.append(
                f"- **Certifiable at {label} {cert:g}:** `{top.defence}` ({_cell(top, cpath)} certified, clean "
                f"{_cell(top, 'clean_accuracy')})."
            )
    return lines


def _header(meta: dict[str, Any]) -> list[str]:
    p = meta["protocol"]
    seeds = meta.get("seeds", [p.get("seed", 0)])
    return [
        f"# Defence comparison ({meta.get('preset', 'custom')} preset, `{p.get('model', 'mnist_cnn')}`)",
        "",
        f"Data: {meta.get('data', '?')}. Model `{p.get('model', 'mnist_cnn')}`, seeds {', '.join(map(str, seeds))} "
        f"(n = {len(seeds)}: initial weights, data order, attack starts), Adam lr {p['lr']:g}, batch "
        f"{p['batch_size']}, {p['epochs']} epochs for every defence. Default training eps: l2 {p['train_eps_l2']:g}, "
        f"l∞ {p['train_eps_linf']:g} (rows named with a radius train at that radius).",
        "",
        "Every cell is mean ± sample std over the seeds. Noise rule: two defences differ on a metric only when "
        f"their intervals mean ± {NOISE_SE_MULTIPLIER:g}·SE (SE = std/√n) do not overlap; with one seed no "
        "difference is called. Attacked accuracy is an upper bound on the true robust accuracy; certified accuracy "
        "is a lower bound.",
        "",
    ]


def summary_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The whole summary (see the module docstring).

    :param rows: One result dict per (defence, seed).
    :param meta: Run metadata (``protocol``, ``data``, ``seeds``, ``total_seconds``).
    :return: Markdown text.
    """
    p = meta["protocol"]
    aggs = aggregate_rows(rows, meta)
    lines = _header(meta) + ["## Headline", "", headline_markdown(rows, meta), "## Findings", ""]
    lines += findings(aggs, p) + ["", "## Which defence to pick", ""] + recommendations(aggs, p)
    lines += ["", "## Accuracy under the fast AutoAttack pair (mean ± std)", ""]
    good = [a for a in aggs if a.seeds]
    for key, sweep in (("2", p["eps_l2"]), ("inf", p["eps_linf"])):
        header = ["defence", "trained against", "clean"] + [f"AA-fast {norm_label(key)} {e:g}" for e in sweep]
        cells = [
            [a.defence, against(a), _cell(a, "clean_accuracy")]
            + [_cell(a, f"robust_accuracy/{key}/{e:g}") for e in sweep]
            for a in good
        ]
        lines += _table(header, cells) + [""]
    lines += ["## Certified accuracy and cost (mean ± std)", ""]
    header = ["defence", "s/epoch", "train s"] + [f"cert l2 {e:g}" for e in p["cert_eps_l2"]]
    header += [f"cert l∞ {e:g}" for e in p["cert_eps_linf"]]
    cells = [
        [a.defence, _cell(a, "seconds_per_epoch", 2), _cell(a, "train_seconds", 1)]
        + [_cell(a, f"certified_accuracy/2/{e:g}") for e in p["cert_eps_l2"]]
        + [_cell(a, f"certified_accuracy/inf/{e:g}") for e in p["cert_eps_linf"]]
        for a in good
    ]
    lines += _table(header, cells) + [""]
    if any(a.standard for a in good):
        lines += ["## Standard AutoAttack against the fast pair (first seed)", ""]
        header = ["defence", "norm", "eps", "n", "AA-fast", "AA-std", "gap", "broken by (CE/T/FAB/Square)", "s"]
        cells = []
        for a in good:
            for key, e in sorted(a.standard.items()):
                gap, se, counts = standard_gap(e)
                by = "/".join(str(e["broken_by"].get(k, 0)) for k in ("apgd-ce", "apgd-t", "fab-t", "square"))
                cells.append(
                    [
                        a.defence,
                        norm_label(key),
                        f"{e['eps']:g}",
                        str(e["n"]),
                        f"{e['fast']:.3f}",
                        f"{e['standard']:.3f}",
                        f"{gap:.3f} ± {se:.3f}" + (" *" if counts else ""),
                        by,
                        f"{e['seconds']:.0f}",
                    ]
                )
        lines += _table(header, cells) + ["", "`*`: gap outside the noise (gap > 2·SE).", ""]
    lines += _generalization(rows, aggs, p) + ["## Adaptations around ART (no ART code patched) and settings", ""]
    for a in aggs:
        row = next(r for r in rows if r["defence"] == a.defence)
        details = ", ".join(f"{k}={v}" for k, v in sorted((row.get("details") or {}).items()))
        lines.append(f"- **{a.defence}** ({a.description}){': ' + details if details else ''}")
        if row.get("settings"):
            lines.append(f"  - settings: {row['settings']}")
        lines += [f"  - {item}" for item in row.get("adaptations", [])]
        lines += [f"  - **failed**, {e.splitlines()[0][:200] if e else ''}" for e in a.errors]
    if meta.get("total_seconds") is not None:
        lines += [
            "",
            f"Total wall-clock time of this run: {meta['total_seconds']:.0f} s ({meta.get('recomputed', '?')}"
            f" (defence, seed) results computed, {meta.get('cached', '?')} loaded from cache).",
        ]
    return "\n".join(lines) + "\n"


def _generalization(rows: list[dict[str, Any]], aggs: list[DefenceAggregate], p: dict[str, Any]) -> list[str]:
    from art_jacreg.compare.stats import aggregate

    ref2, refi = p["ref_eps_l2"], p["ref_eps_linf"]
    lines = [
        "## Jacobian norms and generalization (mean over seeds)",
        "",
        f"Gaps: loss gap = test − train (cross-entropy), accuracy gap = train − test; robust = under the fast pair at "
        f"l2 {ref2:g} / l∞ {refi:g}. ‖J‖ are means over {p['n_jacobian']} points. BFT = Bartlett-Foster-Telgarsky "
        "margin-bound term (log factors omitted); above 1 the bound is vacuous.",
        "",
    ]
    paths = [
        ("‖J‖_F test", ("jacobian", "test", "frobenius")),
        ("‖J‖₁,₁ test", ("jacobian", "test", "l11")),
        ("loss gap", ("gaps", "standard", "loss_gap")),
        ("acc gap", ("gaps", "standard", "accuracy_gap")),
        (f"rob. loss gap l2 {ref2:g}", ("gaps", "robust_2", "loss_gap")),
        (f"rob. loss gap l∞ {refi:g}", ("gaps", "robust_inf", "loss_gap")),
        ("BFT term", ("generalization", "margin_bound")),
    ]
    cells = []
    for a in aggs:
        if not a.seeds:
            continue
        group = [r for r in rows if r["defence"] == a.defence]
        cell = [a.defence]
        for _, keys in paths:
            est = aggregate(group, functools.partial(_dig, keys=keys))
            cell.append(f"{est.mean:.3g}" if est is not None else "–")
        cells.append(cell)
    return lines + _table(["defence", *(h for h, _ in paths)], cells) + [""]


def _dig(row: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(row, dict):
            return None
        row = row.get(key)
    return row
