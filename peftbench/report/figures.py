"""Report figures (each saved as .png and .svg): accuracy vs. parameters, curves, per-class IoU.

matplotlib is imported lazily with the Agg backend: reports run headless, and importing
``peftbench.report`` should stay cheap for CLI commands that never draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def method_colors(methods: Sequence[str]) -> dict[str, Any]:
    """One fixed colour per method, shared by all figures so a method reads the same everywhere."""
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _grid(n: int, width: float = 5.0, height: float = 4.0) -> tuple[Any, list[Any]]:
    plt = _plt()
    cols = 2 if n == 4 else min(max(n, 1), 3)  # 2x2 reads better than 3+1
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def _save(fig: Any, stem: Path) -> list[Path]:
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=150 if p.suffix == ".png" else None, bbox_inches="tight")
    _plt().close(fig)
    return paths


def _empty(stem: Path, title: str) -> list[Path]:
    # Still write the file: a report with a missing figure looks like a bug, this says why.
    fig, (ax, *_) = _grid(1)
    ax.text(0.5, 0.5, "no finished runs to plot", ha="center", va="center", fontsize=12)
    ax.set_axis_off()
    ax.set_title(title)
    return _save(fig, stem)


def plot_miou_vs_params(summary: pd.DataFrame, stem: Path, label: str = "mIoU") -> list[Path]:
    """Test ``label`` (mean, std error bars) against trainable parameters, log x, per dataset/split."""
    data = summary.dropna(subset=[f"{label}_mean", "trainable_params"])
    data = data[data["trainable_params"] > 0]
    title = f"Test {label} vs. trainable parameters"
    if data.empty:
        return _empty(stem, title)
    colors = method_colors(list(dict.fromkeys(summary["method"])))
    groups = list(data.groupby(["dataset", "split"], sort=False))
    fig, axes = _grid(len(groups), 5.5, 4.2)
    for ax, ((dataset, split), g) in zip(axes, groups, strict=False):
        # Alternate label placement along x so neighbouring methods' labels do not collide.
        for k, (_, r) in enumerate(g.sort_values("trainable_params").iterrows()):
            x, y = float(r["trainable_params"]), float(r[f"{label}_mean"])
            yerr = 0.0 if pd.isna(r[f"{label}_std"]) else float(r[f"{label}_std"])
            ax.errorbar(x, y, yerr=yerr, fmt="o", ms=7, capsize=4, color=colors[r["method"]],
                        label=r["method"])
            ax.annotate(r["method"], (x, y), textcoords="offset points",
                        xytext=(7, 7 if k % 2 == 0 else -13), fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(f"test {label} (%)")
        ax.set_title(f"{dataset} · {split}")
        ax.grid(True, which="major", alpha=0.3)
        ax.margins(x=0.25, y=0.2)  # room for the point labels
    fig.suptitle(title, fontsize=13)
    return _save(fig, stem)


def plot_curves(histories: pd.DataFrame, stem: Path, methods: Sequence[str],
                metric: str = "val/mIoU") -> list[Path]:
    """Per-epoch ``metric`` (finished runs), mean over seeds with a ±std band, one line per method."""
    h = histories[histories["status"] == "FINISHED"]
    title = f"{metric} per epoch (mean ± std over seeds)"
    if h.empty:
        return _empty(stem, title)
    from matplotlib.ticker import MaxNLocator

    colors = method_colors(list(methods))
    scale = 100.0 if metric.split("/", 1)[0] in ("test", "val") else 1.0
    groups = list(h.groupby(["dataset", "split"], sort=False))
    fig, axes = _grid(len(groups), 5.5, 4.0)
    for ax, ((dataset, split), g) in zip(axes, groups, strict=False):
        for method in [m for m in methods if m in set(g["method"])]:
            s = g[g["method"] == method].groupby("step")["value"].agg(["mean", "std"]) * scale
            ax.plot(s.index, s["mean"], marker="o", ms=3, color=colors[method], label=method)
            ax.fill_between(s.index, s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0),
                            color=colors[method], alpha=0.15, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{metric} (%)" if scale == 100.0 else metric)
        ax.set_title(f"{dataset} · {split}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=13)
    return _save(fig, stem)


def plot_per_class_iou(per_class: pd.DataFrame, stem: Path) -> list[Path]:
    """Heatmap method × class of mean test IoU (%), one panel per dataset (reference split)."""
    plt = _plt()
    title = "Per-class test IoU (%)"
    datasets = [(d, g) for d, g in per_class.groupby("dataset", sort=False)
                if g.drop(columns=["dataset", "split", "method"]).notna().any().any()]
    if not datasets:
        return _empty(stem, title)
    n_cls = max(g.dropna(axis=1, how="all").shape[1] - 3 for _, g in datasets)
    n_met = max(len(g) for _, g in datasets)
    width, height = max(6.0, 0.55 * n_cls + 2.5), max(2.5, 0.45 * n_met + 1.8)
    fig, axes = plt.subplots(len(datasets), 1, figsize=(width, height * len(datasets)),
                             squeeze=False)
    for ax, (dataset, g) in zip(axes[:, 0], datasets, strict=True):
        values = g.drop(columns=["dataset", "split", "method"]).dropna(axis=1, how="all")
        matrix = values.to_numpy(dtype=float)
        im = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(values.shape[1]), values.columns, rotation=45, ha="right")
        ax.set_yticks(range(len(g)), g["method"])
        if values.shape[1] <= 30:  # numbers stay legible up to ~30 classes
            for i, j in ((i, j) for i in range(matrix.shape[0]) for j in range(matrix.shape[1])):
                v = matrix[i, j]
                if math.isnan(v):
                    continue
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if v < 60 else "black")
        ax.set_title(f"{dataset} · {g['split'].iloc[0]}")
        fig.colorbar(im, ax=ax, label="IoU (%)", fraction=0.03, pad=0.02)
    fig.suptitle(title, fontsize=13)
    return _save(fig, stem)
