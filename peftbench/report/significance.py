"""The significance section: one table per (dataset, split) of each method's paired difference to
the baseline, and the sentences a paper would quote."""

from __future__ import annotations

from collections.abc import Sequence

from peftbench.report.render import Table
from peftbench.report.stats import TEST_TEXT, Paired


def significance_tables(diffs: dict[tuple[str, str, str], Paired], methods: Sequence[str]) -> list[Table]:
    cells: dict[tuple[str, str], list[Paired]] = {}
    for (dataset, split, _), p in diffs.items():
        cells.setdefault((dataset, split), []).append(p)
    tables = []
    for (dataset, split), pairs in cells.items():
        pairs.sort(key=lambda p: list(methods).index(p.method))
        rows = [[p.method, p.baseline, p.cell(), p.interval(), str(p.n)] for p in pairs]
        tables.append(Table(f"Δ to `{pairs[0].baseline}`: {dataset}, split `{split}`",
                            ["method", "baseline", "Δ mIoU (points)", "95 % CI", "paired seeds"], rows))
    return tables


def verdicts(diffs: dict[tuple[str, str, str], Paired]) -> list[str]:
    """One sentence per compared method, e.g. "gem beats linear beyond the seed spread on ..."."""
    return [p.verdict(f"{dataset} ({split})") for (dataset, split, _), p in diffs.items()]


__all__ = ["TEST_TEXT", "significance_tables", "verdicts"]
