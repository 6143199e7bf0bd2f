"""Data-efficiency curves: test mIoU vs fraction of training scenes and vs labelled points per scene
(log x), one line per method, the seed spread (± std) as a band."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from peftbench.report import style

AXES = {"scenes": "training scenes (%)", "points": "labelled points per scene"}


def plot_data_efficiency(curves: pd.DataFrame, stem: Path, methods: Sequence[str],
                         colors: dict[str, Any]) -> list[Path]:
    """One panel per (dataset, kind) that has limited splits; "full" is the last point of each."""
    title = "Data efficiency (mean ± std over seeds)"
    limited = curves.dropna(subset=["amount"])
    limited = limited[~((limited["kind"] == "scenes") & (limited["amount"] == 100.0))]
    panels = list(dict.fromkeys(zip(limited["dataset"], limited["kind"], strict=True)))
    with style.paper_style():
        if not panels:
            return style.empty(stem, title, "no scenes-/points- splits finished")
        import seaborn as sns

        fig, axes = style.panels(len(panels))
        for ax, (dataset, kind) in zip(axes, panels, strict=False):
            g = curves[(curves["dataset"] == dataset) & (curves["kind"] == kind)].copy()
            ticks = sorted(g["amount"].dropna().unique())
            labels = [f"{t:g}" for t in ticks]
            if kind == "points" and g["amount"].isna().any():  # full annotation: one step past the largest
                full_x = ticks[-1] * 4 if ticks else 1.0
                g["amount"] = g["amount"].fillna(full_x)
                ticks, labels = [*ticks, full_x], [*labels, "full"]
            shown = [m for m in methods if m in set(g["method"])]
            sns.lineplot(data=g, x="amount", y="mIoU", hue="method", hue_order=shown, palette=colors,
                         errorbar="sd", marker="o", markersize=4, err_kws={"alpha": 0.15}, ax=ax, legend=False)
            ax.set_xscale("log")
            ax.set_xticks(ticks, labels)
            ax.minorticks_off()
            ax.set_xlabel(AXES[kind] + " (log)")
            ax.set_ylabel("test mIoU (%)")
            ax.set_title(f"{dataset} · limited {'reconstructions' if kind == 'scenes' else 'annotations'}",
                         fontsize="small")
        style.legend_below(fig, colors, [m for m in methods if m in set(curves["method"])])
        return style.save(fig, stem)
