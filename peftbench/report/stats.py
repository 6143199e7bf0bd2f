"""Is a difference more than seed noise? Each method against a baseline, paired by seed, with a
95 % confidence interval from Student's t distribution (a two-sided paired t-test at 0.05)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pandas as pd

from peftbench.report.compare import baseline_for
from peftbench.report.tables import DASH, latest_finished

TEST_TEXT = (
    "Δ = method − baseline in test mIoU points, paired by seed (only seeds where both finished): "
    "the mean of the per-seed differences ± the half-width of its two-sided 95 % confidence "
    "interval from Student's t distribution with n − 1 degrees of freedom (a paired t-test at "
    "α = 0.05). * marks an interval that excludes 0, i.e. a difference beyond the seed spread. "
    "With one paired seed there is no interval (\"single seed, no interval\")."
)
SINGLE = "single seed, no interval"


@dataclasses.dataclass
class Paired:
    """Paired per-seed differences of one method to its baseline (in points)."""
    method: str
    baseline: str
    diffs: list[float]

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return sum(self.diffs) / self.n if self.n else math.nan

    @property
    def half_width(self) -> float:
        if self.n < 2:
            return math.nan
        from scipy import stats

        sd = pd.Series(self.diffs).std(ddof=1)
        return float(stats.t.ppf(0.975, self.n - 1) * sd / math.sqrt(self.n))

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def significant(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def cell(self) -> str:
        """"+2.8 ± 1.9*", "+2.8 (single seed, no interval)" or "—"."""
        if self.n == 0:
            return DASH
        if self.n == 1:
            return f"{self.mean:+.1f} ({SINGLE})"
        return f"{self.mean:+.1f} ± {self.half_width:.1f}{'*' if self.significant else ''}"

    def interval(self) -> str:
        return f"[{self.low:+.1f}, {self.high:+.1f}]" if self.n >= 2 else DASH

    def verdict(self, where: str) -> str:
        """One sentence a reader can quote, e.g. "gem beats linear beyond the seed spread ..."."""
        if self.n == 0:
            return f"{self.method} vs {self.baseline} on {where}: no seed where both finished."
        if self.n == 1:
            return (f"{self.method} vs {self.baseline} on {where}: {self.mean:+.1f} points on one seed "
                    f"({SINGLE}).")
        ci = f"{self.mean:+.1f} points, 95 % CI {self.interval()}, paired t over {self.n} seeds"
        if not self.significant:
            return f"{self.method} vs {self.baseline} on {where}: {ci}; not beyond the seed spread."
        word = "beats" if self.mean > 0 else "is below"
        return f"{self.method} {word} {self.baseline} beyond the seed spread on {where}: {ci}."


def _per_seed(done: pd.DataFrame, metric: str) -> dict[int, float]:
    vals = done.dropna(subset=[metric, "seed"])
    return {int(s): float(v) * 100 for s, v in zip(vals["seed"], vals[metric], strict=True)}


def paired(method_by_seed: dict[int, float], base_by_seed: dict[int, float], method: str,
           baseline: str) -> Paired:
    seeds = sorted(set(method_by_seed) & set(base_by_seed))
    return Paired(method, baseline, [method_by_seed[s] - base_by_seed[s] for s in seeds])


def significance(runs: pd.DataFrame, methods: Sequence[str], baseline: str,
                 metric: str = "test/mIoU") -> dict[tuple[str, str, str], Paired]:
    """(dataset, split, method) -> Paired, for every method that has a baseline in that cell."""
    done = latest_finished(runs)
    out: dict[tuple[str, str, str], Paired] = {}
    for (dataset, split), cell in done.groupby(["dataset", "split"], sort=False):
        present = set(cell["method"])
        for method in methods:
            base = baseline_for(method, methods, baseline)
            if base is None or method == base or method not in present:
                continue
            out[(dataset, split, method)] = paired(
                _per_seed(cell[cell["method"] == method], metric),
                _per_seed(cell[cell["method"] == base], metric), method, base)
    return out
