"""The data-efficiency view (the paper's Table 2): methods × splits, Limited Reconstructions
(``scenes-<percent>``) | Limited Annotations (``points-<labelled points per scene>``) | Full."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from peftbench.data.efficiency import parse_split
from peftbench.errors import PeftbenchError

from peftbench.report.render import Table, best_cells
from peftbench.report.tables import DASH, latest_finished

KINDS = {"scenes": ("Limited Reconstructions", "scenes {:g} %"),
         "points": ("Limited Annotations", "points {:g}")}
SEEDED = "†"


def split_amount(split: str) -> tuple[str, float] | None:
    """``scenes-10`` -> ("scenes", 10.0); ``points-20`` -> ("points", 20.0); others None."""
    try:
        kind, amount = parse_split(split)
    except PeftbenchError:  # a run logged by hand with a split of its own: not a data-efficiency cell
        return None
    return (kind, float(amount)) if amount is not None else None


def has_data_efficiency(runs: pd.DataFrame) -> bool:
    return any(split_amount(s) for s in runs["split"].dropna().unique())


def columns_of(splits: Sequence[str]) -> list[tuple[str, str, str]]:
    """(group, split, header) per column: each kind's splits by amount, then its "full" column."""
    cols = []
    for kind, (group, header) in KINDS.items():
        mine = sorted((a[1], s) for s in splits if (a := split_amount(s)) and a[0] == kind)
        if not mine:
            continue
        cols += [(group, s, header.format(amount)) for amount, s in mine]
        if "full" in splits:
            cols.append((group, "full", "full"))
    return cols


def _seeded_cells(runs: pd.DataFrame) -> tuple[set[tuple[str, str, str]], int]:
    """Cells with a finished run whose subset was drawn by seed; and runs that did not record it."""
    done = latest_finished(runs)
    limited = done[done["split"].map(lambda s: split_amount(s) is not None)]
    seeded = limited[limited["split_source"] == "seeded"]
    cells = set(zip(seeded["dataset"], seeded["split"], seeded["method"], strict=True))
    return cells, int(limited["split_source"].isna().sum())


def data_efficiency_tables(summary: pd.DataFrame, runs: pd.DataFrame, methods: Sequence[str]) -> list[Table]:
    """One table per dataset that has limited splits; best mean per column in bold."""
    seeded, unrecorded = _seeded_cells(runs)
    tables = []
    for dataset, group in summary.groupby("dataset", sort=False):
        cols = columns_of(list(dict.fromkeys(group["split"])))
        if not any(split != "full" for _, split, _ in cols):
            continue
        cell = group.set_index(["split", "method"])
        rows, bold = [], set()
        present = [m for m in methods if m in set(group["method"])]
        for i, method in enumerate(present):
            row = [method]
            for _, split, _ in cols:
                text = str(cell.loc[(split, method), "mIoU"]) if (split, method) in cell.index else DASH
                row.append(text + (SEEDED if (dataset, split, method) in seeded else ""))
            rows.append(row)
        for j, (_, split, _) in enumerate(cols, start=1):
            means = [cell.loc[(split, m), "mIoU_mean"] if (split, m) in cell.index else float("nan") for m in present]
            bold |= best_cells([float(v) for v in means], j)
        groups = [("", 1)] + [(g, sum(1 for c in cols if c[0] == g)) for g in dict.fromkeys(c[0] for c in cols)]
        notes = ["Test mIoU (%), mean ± std over seeds; best per column in bold. Limited Reconstructions: "
                 "the percentage of training scenes; Limited Annotations: labelled points per scene; "
                 "\"full\" is the same full-data run in both groups."]
        if any(SEEDED in c for r in rows for c in r):
            notes.append(f"{SEEDED}: the subset was drawn by seed because the official split files were missing "
                         "(run tag `peftbench.split_source=seeded`).")
        if unrecorded:
            notes.append(f"{unrecorded} limited-split run(s) did not record whether their subset was official "
                         "or seeded (no `peftbench.split_source` tag; see each run's split.json).")
        tables.append(Table(f"{dataset} — data efficiency", ["method", *(c[2] for c in cols)], rows, notes,
                            groups, bold))
    return tables


def curve_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs as points of the data-efficiency curves: dataset, kind, amount, method, mIoU.

    "full" runs join both kinds: at 100 % of scenes, and at the ``points`` axis' "full" position
    (``amount`` NaN, placed by the figure).
    """
    done = latest_finished(runs[runs["kind"] != "combined"])
    done = done.dropna(subset=["test/mIoU"]) if "test/mIoU" in done else done.iloc[:0]
    rows = []
    for _, r in done.iterrows():
        amount = split_amount(r["split"])
        kinds = [amount] if amount else ([("scenes", 100.0), ("points", float("nan"))] if r["split"] == "full" else [])
        rows += [{"dataset": r["dataset"], "kind": k, "amount": a, "method": r["method"], "seed": r["seed"],
                  "mIoU": 100 * r["test/mIoU"]} for k, a in kinds]
    return pd.DataFrame(rows, columns=["dataset", "kind", "amount", "method", "seed", "mIoU"])
