"""Figures of the cross-dataset and significance views: test mIoU per dataset (bars, seed std as
error bars) and each method's paired difference to the baseline with its 95 % interval."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from peftbench.report import style
from peftbench.report.compare import SEP
from peftbench.report.stats import Paired


def plot_cross_dataset(points: pd.DataFrame, columns: Sequence[str], stem: Path, methods: Sequence[str],
                       colors: dict[str, Any]) -> list[Path]:
    """``points``: one row per finished run (dataset, method, mIoU in %), datasets in ``columns`` order."""
    title = "Test mIoU across datasets (mean, error bar: std over seeds)"
    with style.paper_style():
        if points.empty:
            return style.empty(stem, title)
        import seaborn as sns

        shown = [m for m in methods if m in set(points["method"])]
        fig, (ax, *_) = style.panels(1, width=max(2 * style.COLUMN_IN, 0.9 * len(columns) * len(shown) ** 0.5), cols=1)
        sns.barplot(data=points, x="dataset", y="mIoU", hue="method", order=list(columns), hue_order=shown,
                    palette=colors, errorbar="sd", capsize=0.1, err_kws={"linewidth": 0.8}, ax=ax, legend=False)
        low = points["mIoU"].min()
        ax.set_ylim(max(0.0, low - 10), min(100.0, points["mIoU"].max() + 5))
        ax.set_xlabel("")
        ax.set_ylabel("test mIoU (%)")
        ax.set_title(title, fontsize="small")
        style.legend_below(fig, colors, shown)
        return style.save(fig, stem)


def plot_significance(diffs: dict[tuple[str, str, str], Paired], stem: Path, colors: dict[str, Any]) -> list[Path]:
    """Forest plot: one row per (dataset, split, method) with ≥ 2 paired seeds, 95 % CI, line at 0."""
    rows = [(f"{m} · {d} · {s}", p) for (d, s, m), p in diffs.items() if p.n >= 2]
    title = "Difference to the baseline (test mIoU points, 95 % CI, paired t)"
    with style.paper_style():
        if not rows:
            return style.empty(stem, title, "fewer than 2 paired seeds: no interval")
        fig, (ax, *_) = style.panels(1, width=2 * style.COLUMN_IN, height=0.9 + 0.22 * len(rows), cols=1)
        for y, (label, p) in enumerate(reversed(rows)):
            ax.errorbar(p.mean, y, xerr=p.half_width, fmt="o", ms=4, capsize=2,
                        color=colors[p.method], mfc=colors[p.method] if p.significant else "white")
        ax.axvline(0.0, color="0.3", lw=0.8, ls="--")
        ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize="x-small")
        baselines = {p.baseline for _, p in rows}  # several with `report A B`: each experiment's own
        against = baselines.pop() if len(baselines) == 1 else f"{rows[0][1].baseline.split(SEP)[0]} of each experiment"
        ax.set_xlabel(f"Δ test mIoU vs {against} (points); filled: interval excludes 0")
        ax.set_title(title, fontsize="small")
        return style.save(fig, stem)
