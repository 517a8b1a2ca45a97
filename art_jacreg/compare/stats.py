"""Statistics over seeds: mean ± std per metric, the noise rule that decides whether two defences differ, and the
Pareto front of cost against robustness.

**Noise rule.** With ``n`` seeds a metric has mean ``m``, sample standard deviation ``s`` (``ddof=1``) and standard
error ``se = s / sqrt(n)``. Two defences differ on that metric only when their intervals ``m ± 2·se`` do not overlap,
i.e. ``|m_a - m_b| > 2·(se_a + se_b)``. With one seed there is no noise estimate and no difference is called. The
rule is conservative compared with a Welch test at 95 % for n >= 3 in the usual case of similar spreads; it is meant
to keep the summary from calling differences the seeds do not support, not to be a formal test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Estimate", "estimate", "aggregate", "differs", "compare", "pareto_front", "NOISE_SE_MULTIPLIER"]

#: Half-width of the noise interval in standard errors.
NOISE_SE_MULTIPLIER = 2.0


@dataclass(frozen=True)
class Estimate:
    """A metric over seeds.

    :ivar mean: Mean.
    :ivar std: Sample standard deviation (``ddof=1``; ``nan`` for one seed).
    :ivar n: Number of seeds.
    """

    mean: float
    std: float
    n: int

    @property
    def se(self) -> float:
        """Standard error ``std / sqrt(n)`` (``nan`` for one seed).

        :return: The standard error.
        """
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan

    def interval(self) -> tuple[float, float]:
        """The noise interval ``mean ± 2·se`` (``(mean, mean)`` for one seed).

        :return: ``(low, high)``.
        """
        half = NOISE_SE_MULTIPLIER * self.se if self.n > 1 else 0.0
        return self.mean - half, self.mean + half

    def to_dict(self) -> dict[str, Any]:
        """JSON form.

        :return: ``{"mean", "std", "n"}`` (``std`` ``None`` for one seed).
        """
        return {"mean": self.mean, "std": None if math.isnan(self.std) else self.std, "n": self.n}

    def text(self, digits: int = 3) -> str:
        """``mean ± std`` (just ``mean`` for one seed).

        :param digits: Decimals.
        :return: The text.
        """
        if self.n < 2 or math.isnan(self.std):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def estimate(values: Sequence[float]) -> Estimate | None:
    """Mean and sample standard deviation of the finite values.

    :param values: One value per seed (``None`` and non-finite values are skipped).
    :return: The :class:`Estimate`, or ``None`` when no value is left.
    """
    clean = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not clean:
        return None
    array = np.asarray(clean, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(clean) > 1 else math.nan
    return Estimate(float(array.mean()), std, len(clean))


def aggregate(rows: Sequence[dict[str, Any]], getter: Callable[[dict[str, Any]], Any]) -> Estimate | None:
    """:func:`estimate` of one metric over the successful rows (one per seed) of a defence.

    :param rows: The defence's result rows.
    :param getter: Reads the metric from a row (may return ``None``).
    :return: The estimate or ``None``.
    """
    return estimate([getter(row) for row in rows if row.get("status") == "ok"])


def differs(a: Estimate | None, b: Estimate | None) -> bool:
    """Whether two estimates differ outside the noise (the module's rule).

    :param a: First estimate.
    :param b: Second estimate.
    :return: ``True`` only when both have >= 2 seeds and their ``mean ± 2·se`` intervals do not overlap.
    """
    if a is None or b is None or a.n < 2 or b.n < 2:
        return False
    return abs(a.mean - b.mean) > NOISE_SE_MULTIPLIER * (a.se + b.se)


def compare(a: Estimate | None, b: Estimate | None) -> str:
    """``">"``, ``"<"`` when ``a`` is above / below ``b`` outside the noise, else ``"≈"``.

    :param a: First estimate.
    :param b: Second estimate.
    :return: The symbol.
    """
    if a is None or b is None or not differs(a, b):
        return "≈"
    return ">" if a.mean > b.mean else "<"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when the first coordinate (a cost) is minimised and the second (an
    accuracy) maximised. A point is dominated when another is no worse in both and better in one; equal points
    dominate neither.

    :param points: ``(cost, accuracy)`` pairs.
    :return: The indices of the front, sorted by cost.
    """
    front = []
    for i, (cost_i, acc_i) in enumerate(points):
        dominated = any(
            cost_j <= cost_i and acc_j >= acc_i and (cost_j < cost_i or acc_j > acc_i)
            for j, (cost_j, acc_j) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))
