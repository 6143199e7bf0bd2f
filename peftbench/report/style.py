"""One look for every report figure: seaborn's paper style, a fixed colour per method across the
whole report, panels one paper column wide, PNG + SVG.

matplotlib is imported lazily with the Agg backend: reports run headless, and importing
``peftbench.report`` stays cheap for CLI commands that never draw.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

COLUMN_IN = 3.3     # one column of a two-column paper, in inches; two panels side by side = full width
PANEL_H_IN = 2.6
PNG_DPI = 200


def plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def method_colors(methods: Sequence[str]) -> dict[str, Any]:
    """One fixed colour per method (colour-blind safe up to 10), shared by all figures of a report."""
    import seaborn as sns

    methods = list(dict.fromkeys(methods))
    palette = sns.color_palette("colorblind" if len(methods) <= 10 else "husl", max(len(methods), 1))
    return {m: palette[i] for i, m in enumerate(methods)}


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """seaborn's "paper" context and white grid, applied only while a figure is drawn and saved."""
    import seaborn as sns

    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=0.95),
          "svg.fonttype": "none", "legend.frameon": False}
    with plt().rc_context(rc):
        yield


def panels(n: int, width: float = COLUMN_IN, height: float = PANEL_H_IN, cols: int = 2) -> tuple[Any, list[Any]]:
    """A grid of ``n`` panels, each one paper column wide; unused cells hidden."""
    cols = min(max(n, 1), cols)
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def save(fig: Any, stem: Path) -> list[Path]:
    """``stem``.png and ``stem``.svg, tight; the figure is closed."""
    if not fig.legends:  # legend_below already laid the panels out
        fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=PNG_DPI if p.suffix == ".png" else None, bbox_inches="tight",
                    metadata={"Date": None} if p.suffix == ".svg" else None)
    plt().close(fig)
    return paths


def empty(stem: Path, title: str, why: str = "no finished runs to plot") -> list[Path]:
    """Still write the file: a report with a missing figure looks like a bug; this says why."""
    fig, (ax, *_) = panels(1)
    ax.text(0.5, 0.5, why, ha="center", va="center")
    ax.set_axis_off()
    ax.set_title(title)
    return save(fig, stem)


def legend_below(fig: Any, colors: dict[str, Any], methods: Sequence[str]) -> None:
    """One legend for all panels, under them, in the report's method order."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colors[m], marker="o", linestyle="-", label=m) for m in methods]
    fig.tight_layout()
    # Anchored under the figure; bbox_inches="tight" on saving takes it in.
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 5), bbox_to_anchor=(0.5, 0.0),
               fontsize="small")
