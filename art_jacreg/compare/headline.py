"""Aggregation of the per-(defence, seed) rows into one row per defence (mean ± std over seeds), and the headline
table: defence, model, seeds, s/epoch, clean accuracy, accuracy under attack at the headline eps of each norm (the
fast pair over all seeds, the standard AutoAttack on the first seed when it was run), certified accuracy at the
certified headline eps. Printed by ``art-jacreg compare`` and written to ``headline.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from art_jacreg._validate import norm_label
from art_jacreg.compare.stats import Estimate, aggregate

__all__ = [
    "DefenceAggregate",
    "aggregate_rows",
    "headline_columns",
    "headline_rows",
    "headline_text",
    "headline_markdown",
    "against",
]


@dataclass
class DefenceAggregate:
    """One defence over its seeds.

    :ivar defence: Name.
    :ivar description: One line.
    :ivar trainer: Adapter key.
    :ivar norm: ``"2"``, ``"inf"`` or ``None``.
    :ivar train_eps: Radius trained against (``None`` for plain and JR).
    :ivar model: Architecture.
    :ivar seeds: Seeds that succeeded.
    :ivar errors: One message per failed seed.
    :ivar metrics: Estimates by metric path (``"clean_accuracy"``, ``"robust_accuracy/2/1.5"``, ...).
    :ivar standard: The standard AutoAttack results of the first seed, by norm key.
    """

    defence: str
    description: str
    trainer: str
    norm: str | None
    train_eps: float | None
    model: str
    seeds: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    metrics: dict[str, Estimate | None] = field(default_factory=dict)
    standard: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, path: str) -> Estimate | None:
        """The estimate of a metric path (``None`` when absent).

        :param path: e.g. ``"robust_accuracy/2/1.5"``.
        :return: The estimate.
        """
        return self.metrics.get(path)

    def require(self, path: str) -> Estimate:
        """The estimate of a metric path that the caller has checked is present.

        :param path: e.g. ``"robust_accuracy/2/1.5"``.
        :return: The estimate.
        :raises KeyError: When the defence has no estimate for ``path``.
        """
        estimate = self.metrics.get(path)
        if estimate is None:
            raise KeyError(f"defence {self.defence!r} has no estimate for metric path {path!r}")
        return estimate

    def to_dict(self) -> dict[str, Any]:
        """JSON form.

        :return: A dict.
        """
        metrics = {k: (v.to_dict() if v is not None else None) for k, v in self.metrics.items()}
        out = {k: getattr(self, k) for k in ("defence", "description", "trainer", "norm", "train_eps", "model")}
        return {**out, "seeds": self.seeds, "errors": self.errors, "metrics": metrics, "standard": self.standard}


def _path_getter(path: str) -> Callable[[dict[str, Any]], Any]:
    keys = path.split("/")

    def get(row: dict[str, Any]) -> Any:
        value: Any = row
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    return get


def metric_paths(protocol: dict[str, Any]) -> list[str]:
    """Every aggregated metric path of a protocol.

    :param protocol: ``meta["protocol"]``.
    :return: The paths.
    """
    paths = ["seconds_per_epoch", "train_seconds", "clean_accuracy"]
    for kind, sweeps in (
        ("robust_accuracy", ("eps_l2", "eps_linf")),
        ("certified_accuracy", ("cert_eps_l2", "cert_eps_linf")),
    ):
        for key, sweep in zip(("2", "inf"), sweeps):
            paths += [f"{kind}/{key}/{eps:g}" for eps in protocol[sweep]]
    return paths


def aggregate_rows(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[DefenceAggregate]:
    """Group the rows by defence (in first-seen order) and aggregate every metric over the seeds.

    :param rows: One result dict per (defence, seed).
    :param meta: Run metadata (``protocol``).
    :return: One :class:`DefenceAggregate` per defence.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["defence"], []).append(row)
    paths = metric_paths(meta["protocol"])
    out = []
    for name, group in groups.items():
        ok = [r for r in group if r.get("status") == "ok"]
        first = (ok or group)[0]
        agg = DefenceAggregate(
            name,
            first.get("description", ""),
            first.get("trainer", ""),
            first.get("norm"),
            first.get("train_eps"),
            first.get("model", meta["protocol"].get("model", "mnist_cnn")),
            [r["seed"] for r in ok],
            [
                f"seed {r.get('seed')} ({r.get('stage', '?')}): {r.get('error', '')}"
                for r in group
                if r.get("status") != "ok"
            ],
        )
        agg.metrics = {path: aggregate(ok, _path_getter(path)) for path in paths}
        for row in ok:
            if row.get("standard_autoattack"):
                agg.standard = row["standard_autoattack"]
                break
        out.append(agg)
    return out


def against(agg: DefenceAggregate) -> str:
    """The threat model a defence trains against, e.g. ``"l∞ 0.3"``, ``"l2 (no eps)"`` or ``"—"``.

    :param agg: The defence.
    :return: The label.
    """
    if agg.norm is None:
        return "—"
    if agg.train_eps is None:
        return f"{norm_label(agg.norm)} (no eps)"
    return f"{norm_label(agg.norm)} {agg.train_eps:g}"


def headline_columns(protocol: dict[str, Any], standard: bool) -> list[tuple[str, Callable[[DefenceAggregate], str]]]:
    """The headline table's columns: header and cell function.

    :param protocol: ``meta["protocol"]``.
    :param standard: Include the standard-AutoAttack columns.
    :return: ``[(header, cell)]``.
    """

    def est(path: str, digits: int = 3) -> Callable[[DefenceAggregate], str]:
        def cell(a: DefenceAggregate) -> str:
            estimate = a.get(path)
            return estimate.text(digits) if estimate is not None else "–"

        return cell

    def std(key: str) -> Callable[[DefenceAggregate], str]:
        return lambda a: f"{a.standard[key]['standard']:.3f}" if key in a.standard else "–"

    cols: list[tuple[str, Callable[[DefenceAggregate], str]]] = [
        ("defence", lambda a: a.defence),
        ("model", lambda a: a.model),
        ("trained against", against),
        ("seeds", lambda a: str(len(a.seeds))),
        ("s/epoch", est("seconds_per_epoch", 2)),
        ("clean", est("clean_accuracy")),
    ]
    for key, eps in (("2", protocol["headline_eps_l2"]), ("inf", protocol["headline_eps_linf"])):
        cols.append((f"AA-fast {norm_label(key)} {eps:g}", est(f"robust_accuracy/{key}/{eps:g}")))
        if standard:
            cols.append((f"AA-std {norm_label(key)} {eps:g}", std(key)))
    for key, eps in (("2", protocol["headline_cert_l2"]), ("inf", protocol["headline_cert_linf"])):
        cols.append((f"cert {norm_label(key)} {eps:g}", est(f"certified_accuracy/{key}/{eps:g}")))
    return cols


def headline_rows(rows: list[dict[str, Any]], meta: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the headline table (a failed defence shows its error).

    :param rows: One result dict per (defence, seed).
    :param meta: Run metadata.
    :return: ``(header, cells)``.
    """
    aggs = aggregate_rows(rows, meta)
    standard = bool(meta["protocol"].get("standard_autoattack"))
    cols = headline_columns(meta["protocol"], standard)
    cells = []
    for agg in aggs:
        if not agg.seeds:
            error = agg.errors[0].split("\n")[0].replace("|", "/")[:160] if agg.errors else "failed"
            error = error.split(" ", 2)[-1]  # drop "seed N"
            cells.append([agg.defence, agg.model, against(agg), "0", f"**error** {error}"] + [""] * (len(cols) - 5))
        else:
            cells.append([cell(agg) for _, cell in cols])
    return [h for h, _ in cols], cells


def attack_note(protocol: dict[str, Any]) -> str:
    """One sentence naming the attacks of the headline columns.

    :param protocol: ``meta["protocol"]``.
    :return: The sentence.
    """
    text = (
        f"AA-fast: ART AutoAttack with APGD-CE + APGD-DLR, {protocol['attack_iter']} iterations each, on "
        f"{protocol['n_attack']} test digits, mean ± std over seeds."
    )
    if protocol.get("standard_autoattack"):
        text += (
            f" AA-std: AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square with {protocol['square_queries']} "
            f"queries) after the fast pair, on {protocol['n_standard']} test digits, first seed only."
        )
    return text + f" cert: sound certificates ({protocol['certify_method']}) on {protocol['n_certify']} test digits."


def headline_text(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The headline table as aligned plain text for the terminal, followed by the attack note.

    :param rows: One result dict per (defence, seed).
    :param meta: Run metadata.
    :return: The text.
    """
    header, cells = headline_rows(rows, meta)
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines) + "\n" + attack_note(meta["protocol"]) + "\n"


def headline_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The headline table in markdown, followed by the attack note.

    :param rows: One result dict per (defence, seed).
    :param meta: Run metadata.
    :return: Markdown text.
    """
    header, cells = headline_rows(rows, meta)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n\n" + attack_note(meta["protocol"]) + "\n"
