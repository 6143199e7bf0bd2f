"""Accuracy against a cost (trainable parameters, latency, peak memory), one panel per group, with
the Pareto front: the methods no other method beats on both accuracy and cost."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from peftbench.report import style
from peftbench.report.efficiency import pareto_front


def plot_tradeoff(frame: pd.DataFrame, x: str, xlabel: str, panel_by: Sequence[str], stem: Path,
                  colors: dict[str, Any], title: str, log_x: bool = True, std: str | None = None) -> list[Path]:
    """``frame``: one row per (panel, method) with ``x``, ``mIoU`` (mean, %) and optionally ``std``."""
    data = frame.dropna(subset=[x, "mIoU"])
    data = data[data[x] > 0] if log_x else data
    with style.paper_style():
        if data.empty:
            return style.empty(stem, title, f"no finished runs with {xlabel}")
        groups = list(data.groupby(list(panel_by), sort=False))
        fig, axes = style.panels(len(groups))
        for ax, (keys, g) in zip(axes, groups, strict=False):
            g = g.reset_index(drop=True)
            for k, r in g.sort_values(x).iterrows():
                err = float(r[std]) if std and pd.notna(r.get(std)) else 0.0
                ax.errorbar(r[x], r["mIoU"], yerr=err, fmt="o", ms=4, capsize=2, color=colors[r["method"]])
                ax.annotate(r["method"], (r[x], r["mIoU"]), textcoords="offset points",
                            xytext=(4, 4 if k % 2 == 0 else -9), fontsize=6)
            front = g.iloc[pareto_front(g[x].tolist(), g["mIoU"].tolist())].sort_values(x)
            ax.step(front[x], front["mIoU"], where="post", color="0.4", ls="--", lw=0.8, label="Pareto front")
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel + (" (log)" if log_x else ""))
            ax.set_ylabel("test mIoU (%)")
            ax.set_title(" · ".join(str(k) for k in (keys if isinstance(keys, tuple) else (keys,))), fontsize="small")
            ax.margins(x=0.15, y=0.15)
            ax.legend(loc="lower right", fontsize="x-small")
        fig.suptitle(title)
        return style.save(fig, stem)
