"""Suites with a search (``peftbench.search``): every table reports the final runs; this section
says which setting each method's search chose and how many search runs it took."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

from peftbench.report.render import Table
from peftbench.report.tables import DASH, ordered


def split_stages(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs the tables use, search runs): runs without a stage tag (no search) count as final."""
    search = runs["stage"] == "search"
    return runs[~search].reset_index(drop=True), runs[search].reset_index(drop=True)


def _setting(choice: object) -> str:
    try:
        point = json.loads(str(choice))
    except json.JSONDecodeError:
        return str(choice)
    return ", ".join(f"{k} = {v}" for k, v in point.items()) if isinstance(point, dict) else str(point)


def search_table(final: pd.DataFrame, search: pd.DataFrame, methods: Sequence[str]) -> Table | None:
    """Per (method, dataset, split) that was searched: the chosen setting and the search runs."""
    if search.empty:
        return None
    rows = []
    for method in ordered([*methods, *search["method"].tolist()]):
        mine = search[search["method"] == method]
        for (dataset, split), runs in mine.groupby(["dataset", "split"], sort=False):
            chosen = final[(final["method"] == method) & (final["dataset"] == dataset) & (final["split"] == split)]
            choice = chosen["search_choice"].dropna()
            counts = runs["status"].value_counts()
            rows.append([method, dataset, split, _setting(choice.iloc[-1]) if len(choice) else DASH,
                         ", ".join(f"{counts[s]} {s.lower()}" for s in counts.index)])
    notes = ["Every other table reports the final runs (tag `peftbench.stage=final`) at the chosen setting; "
             "the search runs only chose it. \"—\": no final run yet."]
    return Table("Search: chosen settings", ["method", "dataset", "split", "chosen setting", "search runs"],
                 rows, notes)
