"""The cross-dataset view (the paper's Table 1): methods × datasets at each dataset's reference
split, a fold group's summed-confusion score as its own column (S3DIS 6-fold), and a mean."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from peftbench.report.render import Table, best_cells
from peftbench.report.tables import DASH, latest_finished, ordered, reference_split


def columns_of(runs: pd.DataFrame) -> list[tuple[str, bool]]:
    """(dataset, counts in the mean) per column, in suite order.

    A fold group shows its first fold (the paper's S3DIS Area 5) and then its summed score; only
    the score counts in the mean, so a group weighs as one dataset. Other folds are left to the
    per-dataset tables.
    """
    trials = runs[runs["kind"] != "combined"]
    cols: list[tuple[str, bool]] = []
    seen_groups: set[str] = set()
    for dataset in ordered(trials["dataset"].tolist()):
        groups = trials.loc[trials["dataset"] == dataset, "group"].dropna()
        if groups.empty:
            cols.append((dataset, True))
        elif (group := groups.iloc[0]) not in seen_groups:
            seen_groups.add(group)
            cols += [(dataset, False), (group, True)]
    return cols


def cross_dataset_table(summary: pd.DataFrame, runs: pd.DataFrame, methods: Sequence[str]) -> Table | None:
    """None unless the runs span at least two columns (datasets or fold groups)."""
    cols = columns_of(runs)
    if len(cols) < 2:
        return None
    splits = {d: reference_split(ordered(summary.loc[summary["dataset"] == d, "split"].tolist()))
              for d, _ in cols if (summary["dataset"] == d).any()}
    cell = summary.set_index(["dataset", "split", "method"])
    first = cols[0][0]
    rows, bold, means = [], set(), {}
    for method in methods:
        key0 = (first, splits.get(first), method)
        params = cell.loc[key0] if key0 in cell.index else None
        row = [method, params["trainable_params_h"] if params is not None else DASH,
               params["trainable_pct_h"] if params is not None else DASH]
        parts = []
        for dataset, in_mean in cols:
            key = (dataset, splits.get(dataset), method)
            row.append(str(cell.loc[key, "mIoU"]) if key in cell.index else DASH)
            if in_mean:
                parts.append(cell.loc[key, "mIoU_mean"] if key in cell.index else float("nan"))
        means[method] = sum(parts) / len(parts) if parts and all(pd.notna(p) for p in parts) else float("nan")
        row.append(DASH if pd.isna(means[method]) else f"{means[method]:.1f}")
        rows.append(row)
    headers = ["method", "params", "trainable %", *(d for d, _ in cols), "mean"]
    for j, (dataset, _) in enumerate(cols, start=3):
        vals = [cell.loc[(dataset, splits.get(dataset), m), "mIoU_mean"]
                if (dataset, splits.get(dataset), m) in cell.index else float("nan") for m in methods]
        bold |= best_cells(vals, j)
    bold |= best_cells([means[m] for m in methods], len(headers) - 1)
    in_mean = ", ".join(d for d, keep in cols if keep)
    notes = [f"Test mIoU (%), mean ± std over seeds, at each dataset's `full` split (else its first split); "
             f"best per column in bold. Params and trainable % as on {first} (the head's size follows the "
             f"number of classes). mean: over {in_mean}, only where every one of them has a result. "
             "\"failed (k)\": no seed finished and k failed; \"—\": no run (a fold group's score needs every "
             "fold finished)."]
    return Table("Test mIoU across datasets", headers, rows, notes, bold=bold)


def points_of(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Finished runs of the table's columns at their reference split (dataset, method, mIoU in %)."""
    cols = [d for d, _ in columns_of(runs)]
    done = latest_finished(runs)
    done = done[done["dataset"].isin(cols)].dropna(subset=["test/mIoU"]) if "test/mIoU" in done else done.iloc[:0]
    keep = [g[g["split"] == reference_split(ordered(g["split"].tolist()))] for _, g in done.groupby("dataset")]
    done = pd.concat(keep) if keep else done
    return pd.DataFrame({"dataset": done["dataset"], "method": done["method"], "mIoU": 100 * done["test/mIoU"]}), cols
