"""Report figures (each saved as .png and .svg): accuracy vs. parameters, curves, per-class IoU.
Style, colours and sizes come from ``style``: every figure of a report looks the same."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from peftbench.report import style


def plot_curves(histories: pd.DataFrame, stem: Path, methods: Sequence[str], colors: dict[str, Any],
                metric: str = "val/mIoU") -> list[Path]:
    """Per-epoch ``metric`` (finished runs), mean over seeds with a ±std band, one line per method."""
    h = histories[histories["status"] == "FINISHED"]
    title = f"{metric} per epoch (mean ± std over seeds)"
    with style.paper_style():
        if h.empty:
            return style.empty(stem, title)
        from matplotlib.ticker import MaxNLocator

        scale = 100.0 if metric.split("/", 1)[0] in ("test", "val") else 1.0
        groups = list(h.groupby(["dataset", "split"], sort=False))
        fig, axes = style.panels(len(groups))
        for ax, ((dataset, split), g) in zip(axes, groups, strict=False):
            for method in [m for m in methods if m in set(g["method"])]:
                s = g[g["method"] == method].groupby("step")["value"].agg(["mean", "std"]) * scale
                ax.plot(s.index, s["mean"], marker="o", ms=2.5, lw=1.2, color=colors[method])
                ax.fill_between(s.index, s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0),
                                color=colors[method], alpha=0.15, linewidth=0)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(f"{metric} (%)" if scale == 100.0 else metric)
            ax.set_title(f"{dataset} · {split}")
        style.legend_below(fig, colors, [m for m in methods if m in set(h["method"])])
        return style.save(fig, stem)


def plot_per_class_iou(per_class: pd.DataFrame, stem: Path) -> list[Path]:
    """Heatmap method × class of mean test IoU (%), one panel per dataset (reference split)."""
    title = "Per-class test IoU (%)"
    datasets = [(d, g) for d, g in per_class.groupby("dataset", sort=False)
                if g.drop(columns=["dataset", "split", "method"]).notna().any().any()]
    with style.paper_style():
        if not datasets:
            return style.empty(stem, title)
        import seaborn as sns

        n_cls = max(g.dropna(axis=1, how="all").shape[1] - 3 for _, g in datasets)
        n_met = max(len(g) for _, g in datasets)
        width = max(2 * style.COLUMN_IN, 0.4 * n_cls + 1.5)
        height = max(1.8, 0.28 * n_met + 1.2)
        fig, axes = style.plt().subplots(len(datasets), 1, figsize=(width, height * len(datasets)), squeeze=False)
        for ax, (dataset, g) in zip(axes[:, 0], datasets, strict=True):
            values = g.drop(columns=["dataset", "split", "method"]).dropna(axis=1, how="all")
            values.index = g["method"]
            sns.heatmap(values, ax=ax, cmap="viridis", vmin=0, vmax=100, annot=values.shape[1] <= 30, fmt=".0f",
                        annot_kws={"fontsize": 6}, cbar_kws={"label": "IoU (%)", "fraction": 0.03, "pad": 0.02})
            ax.set_xlabel("")
            ax.set_ylabel("")
            ax.set_title(f"{dataset} · {g['split'].iloc[0]}")
        return style.save(fig, stem)
