"""The per-sample result table of :meth:`art_jacreg.JacobianBoundReporter.report`.

:class:`BoundReport` holds, side by side and each labelled for what it is, the exact clean loss, the paper's
first-order estimates of the robust loss (Wu & Li 2024), a sound certified upper bound on it, and what a real attack
achieved. Every radius and ``eps`` is in the raw input units the attacker perturbs (ART's ``clip_values`` space).

| Paper link: https://arxiv.org/abs/2412.12449
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from art_jacreg._io import atomic_write_json
from art_jacreg.table_files import decode_json_columns, encode, read_csv, write_csv

__all__ = ["BoundReport", "EXACT", "FIRST_ORDER", "SOUND", "EMPIRICAL", "COLUMN_KINDS"]

EXACT = "exact"
FIRST_ORDER = "first-order estimate"
SOUND = "sound certificate"
EMPIRICAL = "empirical (attack)"

#: What every per-sample column is: exact, a first-order estimate (may be beaten by an attack), a sound certificate
#: (can never be beaten) or an empirical attack result (a lower bound on the true robust loss).
COLUMN_KINDS: dict[str, str] = {
    "label": EXACT,
    "prediction": EXACT,
    "loss": EXACT,
    "first_order_loss": FIRST_ORDER,
    "jacobian_surrogate_loss": FIRST_ORDER,
    "certified_loss_bound": SOUND,
    "certified": SOUND,
    "certified_radius": SOUND,
    "attack_loss": EMPIRICAL,
    "attack_success": EMPIRICAL,
    "attack_prediction": EMPIRICAL,
}

_DTYPES: dict[str, Any] = {
    "label": np.int64,
    "prediction": np.int64,
    "attack_prediction": np.int64,
    "certified": bool,
    "attack_success": bool,
}
_META = ("eps", "norm", "method", "attack", "tolerance")


def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    return str(value)


@dataclasses.dataclass(eq=False)
class BoundReport:
    r"""Per-sample losses and certificates for one threat model, with the kind of each column.

    Columns (numpy arrays of length ``N``; their kinds are in :attr:`column_kinds`):

    * ``label``, ``prediction``, ``loss`` (*exact*): true class, clean prediction, cross-entropy at the clean input.
    * ``first_order_loss``, ``jacobian_surrogate_loss`` (*first-order estimate*): the paper's linearised robust loss
      :math:`\ell + \varepsilon\|\nabla_x\ell\|_{p^*}` and its label-free Jacobian surrogate. Not bounds: an
      attack can exceed them.
    * ``certified_loss_bound``, ``certified``, ``certified_radius`` (*sound certificate*): an upper bound on the
      cross-entropy over the whole ball (intersected with the ``clip_values`` box); whether the clean prediction
      provably cannot change on it; the largest radius on which it provably cannot change. No attack can beat them.
    * ``attack_loss``, ``attack_success``, ``attack_prediction`` (*empirical (attack)*): cross-entropy at the attacked
      point (at least the clean loss, since the clean point is in the ball), whether the ball contains a
      misclassified point that was found (the clean point included), and the prediction at the attacked point.

    :param label: True labels ``(N,)``.
    :param prediction: Clean predictions ``(N,)``.
    :param loss: Clean cross-entropy ``(N,)``.
    :param first_order_loss: First-order robust-loss estimate ``(N,)``.
    :param jacobian_surrogate_loss: The paper's Jacobian surrogate ``(N,)``.
    :param certified_loss_bound: Sound upper bound on the robust cross-entropy ``(N,)``.
    :param certified: Clean prediction certified constant on the ball ``(N,)``.
    :param certified_radius: Certified radius of the clean prediction ``(N,)``, raw input units.
    :param attack_loss: Cross-entropy at the attacked point ``(N,)``.
    :param attack_success: Misclassified point found in the ball ``(N,)``.
    :param attack_prediction: Prediction at the attacked point ``(N,)``.
    :param eps: Radius of the threat ball, raw input units.
    :param norm: ``2.0`` or ``inf``.
    :param method: Certification method (``"lipschitz"``, ``"interval"`` or ``"linear"``).
    :param attack: Attack name.
    :param tolerance: Absolute slack (float32 rounding) used when counting how often a bound was exceeded.
    :param column_kinds: Kind of every column (defaults to :data:`COLUMN_KINDS`).
    """

    label: np.ndarray
    prediction: np.ndarray
    loss: np.ndarray
    first_order_loss: np.ndarray
    jacobian_surrogate_loss: np.ndarray
    certified_loss_bound: np.ndarray
    certified: np.ndarray
    certified_radius: np.ndarray
    attack_loss: np.ndarray
    attack_success: np.ndarray
    attack_prediction: np.ndarray
    eps: float
    norm: float
    method: str
    attack: str
    tolerance: float = 1e-5
    column_kinds: dict[str, str] = dataclasses.field(default_factory=lambda: dict(COLUMN_KINDS))

    def __post_init__(self) -> None:
        n = None
        for name in COLUMN_KINDS:
            arr = np.array(getattr(self, name), dtype=_DTYPES.get(name, np.float64), copy=True).reshape(-1)
            if n is not None and arr.shape[0] != n:
                raise ValueError(f"Column `{name}` has {arr.shape[0]} entries, expected {n}.")
            n = arr.shape[0]
            setattr(self, name, arr)
        self.eps = float(self.eps)
        self.norm = float(self.norm)
        self.tolerance = float(self.tolerance)

    @classmethod
    def columns(cls) -> list[str]:
        """Names of the per-sample columns, in table order.

        :return: The column names.
        """
        return list(COLUMN_KINDS)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"BoundReport(n={len(self)}, eps={self.eps:g}, norm={_norm_name(self.norm)}, method={self.method!r}, "
            f"attack={self.attack!r}, clean_accuracy={s['clean_accuracy']:.3f}, "
            f"certified_accuracy={s['certified_accuracy']:.3f}, attacked_accuracy={s['attacked_accuracy']:.3f}, "
            f"first_order_exceeded={s['first_order_exceeded']}, certificate_violations={s['certificate_violations']})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BoundReport):
            return NotImplemented
        if self.column_kinds != other.column_kinds or any(getattr(self, k) != getattr(other, k) for k in _META):
            return False
        return all(np.array_equal(getattr(self, c), getattr(other, c)) for c in COLUMN_KINDS)

    def exceeded(self) -> dict[str, np.ndarray]:
        """Per-sample flags: where the attack beat the first-order estimates, and where it beat the certificate.

        A certificate is beaten when the attack loss exceeds ``certified_loss_bound`` or a certified prediction
        changed; that must never happen (a count other than 0 is a bug to report).

        :return: Dict of boolean ``(N,)`` arrays ``first_order_loss``, ``jacobian_surrogate_loss``,
            ``certified_loss_bound``, ``certified``.
        """
        tol = self.tolerance
        return {
            "first_order_loss": self.attack_loss > self.first_order_loss + tol,
            "jacobian_surrogate_loss": self.attack_loss > self.jacobian_surrogate_loss + tol,
            "certified_loss_bound": self.attack_loss > self.certified_loss_bound + tol,
            "certified": self.certified & (self.attack_prediction != self.prediction),
        }

    def summary(self) -> dict[str, Any]:
        """Aggregate numbers, each named for what it is.

        :return: Dict with the threat model, ``n``, the mean of every loss column, ``clean_accuracy``,
            ``certified_accuracy`` (correct and certified), ``attacked_accuracy`` (no misclassified point found),
            ``median_certified_radius``, how many samples had their first-order estimate / Jacobian surrogate exceeded
            by the attack (``first_order_exceeded``, ``jacobian_surrogate_exceeded`` and their ``_rate``), and
            ``certificate_violations`` (must be 0).
        """
        n = len(self)
        correct = self.prediction == self.label
        flags = self.exceeded()
        violations = int(np.sum(flags["certified_loss_bound"] | flags["certified"]))

        def mean(arr: np.ndarray) -> float:
            return float(np.mean(arr)) if n else float("nan")

        out: dict[str, Any] = {
            "n": n,
            "eps": self.eps,
            "norm": _norm_name(self.norm),
            "method": self.method,
            "attack": self.attack,
        }
        for name in ("loss", "first_order_loss", "jacobian_surrogate_loss", "certified_loss_bound", "attack_loss"):
            out[f"mean_{name}"] = mean(getattr(self, name))
        out["clean_accuracy"] = mean(correct)
        out["certified_accuracy"] = mean(correct & self.certified)
        out["attacked_accuracy"] = mean(~self.attack_success)
        out["median_certified_radius"] = float(np.median(self.certified_radius)) if n else float("nan")
        for name, key in (("first_order_loss", "first_order"), ("jacobian_surrogate_loss", "jacobian_surrogate")):
            count = int(np.sum(flags[name]))
            out[f"{key}_exceeded"] = count
            out[f"{key}_exceeded_rate"] = count / n if n else float("nan")
        out["certificate_violations"] = violations
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form used by :meth:`to_json`.

        :return: Dict with ``metadata``, ``column_kinds``, ``summary`` and ``data`` (column name -> list).
        """
        return {
            "metadata": {k: encode(getattr(self, k)) for k in _META},
            "column_kinds": dict(self.column_kinds),
            "summary": {k: encode(v) for k, v in self.summary().items()},
            "data": {c: [encode(v) for v in getattr(self, c).tolist()] for c in COLUMN_KINDS},
        }

    def to_markdown(self, max_rows: int | None = 20) -> str:
        """A markdown summary table followed by the per-sample table (column headers carry their kind).

        :param max_rows: Number of per-sample rows to show (``None`` for all).
        :return: Markdown text.
        """
        s = self.summary()
        lines = [
            f"**Bound report**: {len(self)} samples, {_norm_name(self.norm)} ball of radius {self.eps:g} (raw input "
            f"units) intersected with the clip box, certificate `{self.method}`, attack `{self.attack}`.",
            "",
            "| quantity | value | kind |",
            "|---|---|---|",
        ]
        kinds = {
            "mean_loss": EXACT,
            "mean_first_order_loss": FIRST_ORDER,
            "mean_jacobian_surrogate_loss": FIRST_ORDER,
            "mean_certified_loss_bound": SOUND,
            "mean_attack_loss": EMPIRICAL,
            "clean_accuracy": EXACT,
            "certified_accuracy": SOUND,
            "attacked_accuracy": EMPIRICAL,
            "median_certified_radius": SOUND,
            "first_order_exceeded": "attack beat first-order estimate",
            "jacobian_surrogate_exceeded": "attack beat Jacobian surrogate",
            "certificate_violations": "attack beat sound certificate (must be 0)",
        }
        lines += [f"| {key} | {_fmt(s[key])} | {kind} |" for key, kind in kinds.items()]
        lines += ["", "| # | " + " | ".join(f"{c} ({self.column_kinds[c]})" for c in COLUMN_KINDS) + " |"]
        lines.append("|---" * (len(COLUMN_KINDS) + 1) + "|")
        shown = len(self) if max_rows is None else min(len(self), max_rows)
        for i in range(shown):
            lines.append(f"| {i} | " + " | ".join(_fmt(getattr(self, c)[i]) for c in COLUMN_KINDS) + " |")
        if shown < len(self):
            lines.append(f"\n({len(self) - shown} more rows not shown)")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the per-sample table as CSV; metadata and column kinds go in leading ``#`` comment lines.

        Floats are written with ``repr`` so :meth:`from_csv` restores them exactly. The file is written atomically
        (a temporary file in the same folder, then renamed), so an existing file is never left half-written.

        :param path: Output file.
        """
        meta = {k: encode(getattr(self, k)) for k in _META}
        write_csv(path, meta, dict(self.column_kinds), {c: getattr(self, c) for c in COLUMN_KINDS})

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> BoundReport:
        """Read a report written by :meth:`to_csv`.

        :param path: The CSV file.
        :return: The report.
        """
        meta, kinds, data = read_csv(path, _DTYPES)
        return cls(**data, **_decode_meta(meta), column_kinds=kinds)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write metadata, column kinds, summary and per-sample data as JSON (non-finite floats as strings).

        The file is written atomically, like :meth:`to_csv`.

        :param path: Output file.
        """
        atomic_write_json(path, self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BoundReport:
        """Read a report written by :meth:`to_json`.

        :param path: The JSON file.
        :return: The report.
        """
        with open(path, encoding="utf-8") as handle:
            payload = json.load(handle)
        data = decode_json_columns(payload["data"], _DTYPES)
        return cls(**data, **_decode_meta(payload["metadata"]), column_kinds=payload["column_kinds"])


def _decode_meta(meta: dict[str, Any]) -> dict[str, Any]:
    out = dict(meta)
    for key in ("eps", "norm", "tolerance"):
        out[key] = float(out[key])
    return out


def _norm_name(norm: float) -> str:
    return "l2" if norm == 2 else "linf"
