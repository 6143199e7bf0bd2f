"""Ablation views: the tables a suite's ``report:`` block declares (title -> method labels), as
the paper's Tables 6a-c and 10. The block travels with every run (tag ``peftbench.report``), so a
report never needs the suite file; ``--suite FILE`` may supply or replace it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd

from peftbench.report.compare import SEP
from peftbench.report.render import Table, best_cells
from peftbench.report.stats import Paired
from peftbench.report.tables import DASH, ordered, reference_split


def layout_of(runs: pd.DataFrame) -> tuple[dict[str, Any] | None, str | None]:
    """The newest run's ``report:`` block, and a warning when it cannot be read."""
    logged = runs.sort_values("start_time", kind="stable")["report_layout"].dropna()
    if logged.empty:
        return None, None
    try:
        layout = json.loads(logged.iloc[-1])
    except json.JSONDecodeError:
        return None, "the runs' `report:` block (tag peftbench.report) is not valid JSON (truncated?); " \
                     "pass the suite with --suite to lay out its tables"
    return layout, None


def ablation_tables(summary: pd.DataFrame, diffs: dict[tuple[str, str, str], Paired],
                    layout: dict[str, Any] | None) -> list[Table]:
    """Per declared table and dataset (reference split): params, mIoU/mAcc/allAcc, Δ to baseline.

    A label with no run stays as a row of "—": a missing ablation row must be visible.
    """
    if not layout or not layout.get("tables"):
        return []
    tables = []
    for spec in layout["tables"]:
        labels, names = list(spec["rows"]), dict(spec.get("names") or {})
        for dataset in ordered(summary["dataset"].tolist()):
            split = reference_split(ordered(summary.loc[summary["dataset"] == dataset, "split"].tolist()))
            cell = summary[(summary["dataset"] == dataset) & (summary["split"] == split)].set_index("method")
            if not set(labels) & set(cell.index):
                continue
            tables.append(_table(f"{spec['title']} — {dataset}", labels, names, cell,
                                 {m: p for (d, s, m), p in diffs.items() if (d, s) == (dataset, split)}, split))
    return tables


def _table(title: str, labels: Sequence[str], names: dict[str, str], cell: pd.DataFrame,
           diffs: dict[str, Paired], split: str) -> Table:
    headers = ["row", "method", "params", "trainable %", "mIoU", "mAcc", "allAcc", "Δ mIoU (95 % CI)", "seeds"]
    rows, means = [], []
    for label, shown in _expand(labels, cell.index):
        name = names.get(label, label) + shown[len(label):]
        label = shown
        if label in cell.index:
            r = cell.loc[label]
            failed = f", {r['failed']} failed" if r["failed"] else ""
            rows.append([name, label, r["trainable_params_h"], r["trainable_pct_h"],
                         str(r["mIoU"]), str(r["mAcc"]), str(r["allAcc"]),
                         diffs[label].cell() if label in diffs else DASH, f"{r['seeds']}{failed}"])
            means.append(float(r["mIoU_mean"]))
        else:
            rows.append([name, label, DASH, DASH, DASH, DASH, DASH, DASH, "0"])
            means.append(float("nan"))
    base = next(iter({p.baseline for p in diffs.values()}), None)
    notes = [f"Test metrics (%) at split `{split}`, mean ± std over seeds; best mIoU in bold."
             + (f" Δ against `{base}`, as in the significance section." if base else "")]
    return Table(title, headers, rows, notes, bold=best_cells(means, 4))


def _expand(labels: Sequence[str], present: Sequence[str]) -> list[tuple[str, str]]:
    """(declared label, shown method) pairs: in a comparison a label becomes one row per experiment."""
    out = []
    for label in labels:
        suffixed = [m for m in present if m.split(SEP, 1)[0] == label and SEP in m]
        out += [(label, m) for m in suffixed] if label not in present and suffixed else [(label, label)]
    return out
