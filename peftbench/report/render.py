"""One table shape for every report view, rendered to Markdown, LaTeX (booktabs) and HTML."""

from __future__ import annotations

import dataclasses

import pandas as pd

from peftbench.report.tables import (REPORT_METRICS, SUMMARY_HEADERS, best_rows, display_rows, markdown_table,
                                     metric_label, tex_escape)


@dataclasses.dataclass
class Table:
    """A finished table: every cell already a string, so all renderers show the same thing."""
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = dataclasses.field(default_factory=list)
    # Column groups above the headers (LaTeX \multicolumn), e.g. [("", 1), ("Limited Reconstructions", 5)].
    groups: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    bold: set[tuple[int, int]] = dataclasses.field(default_factory=set)  # (row, column) shown in bold

    def cells(self, mark: str) -> list[list[str]]:
        return [[mark.format(c) if (i, j) in self.bold else c for j, c in enumerate(row)]
                for i, row in enumerate(self.rows)]


def best_cells(values: list[float], column: int) -> set[tuple[int, int]]:
    """(row, column) of the highest value(s) of one column, for ``Table.bold``; NaN never wins."""
    known = [v for v in values if v == v]
    if not known:
        return set()
    best = max(known)
    return {(i, column) for i, v in enumerate(values) if v == v and v >= best - 1e-9}


def markdown(table: Table, level: int = 3) -> str:
    """Title as a heading, then the table, then its notes as a paragraph."""
    out = [f"{'#' * level} {table.title}", ""]
    if table.groups and any(name for name, _ in table.groups):
        spans, col = [], 0
        for name, width in table.groups:
            if name:
                spans.append(f"{name}: {', '.join(table.headers[col:col + width])}")
            col += width
        out += ["Column groups — " + "; ".join(spans) + ".", ""]
    out += [markdown_table(table.headers, table.cells("**{}**")), ""]
    if table.notes:
        out += [" ".join(table.notes), ""]
    return "\n".join(out)


def latex(table: Table) -> str:
    """A booktabs tabular with the title as a comment; column groups as \\multicolumn rules."""
    n = len(table.headers)
    parts = [f"% {table.title}", r"\begin{tabular}{l" + "r" * (n - 1) + "}", r"\toprule"]
    if table.groups and any(name for name, _ in table.groups):
        cells, rules, col = [], [], 1
        for name, width in table.groups:
            cells.append(r"\multicolumn{%d}{c}{%s}" % (width, tex_escape(name)) if name else "")
            if name:
                rules.append(r"\cmidrule(lr){%d-%d}" % (col, col + width - 1))
            col += width
        parts += [" & ".join(cells) + r" \\", " ".join(rules)]
    parts.append(" & ".join(tex_escape(h) for h in table.headers) + r" \\")
    parts.append(r"\midrule")
    for row in table.cells("\0{}\0"):
        cells = [tex_escape(c) for c in row]
        parts.append(" & ".join(r"\textbf{" + c.replace("\0", "") + "}" if "\0" in c else c
                                for c in cells) + r" \\")
    parts += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(parts)


def results_tables(summary: pd.DataFrame) -> list[Table]:
    """The per (dataset, split) results tables as ``Table``s (best mIoU bold), for LaTeX and HTML."""
    out = []
    for (dataset, split), group in summary.groupby(["dataset", "split"], sort=False):
        group = group.reset_index(drop=True)
        best = best_rows(group, f"{metric_label(REPORT_METRICS[0])}_mean")
        out.append(Table(f"{dataset} — split `{split}`", SUMMARY_HEADERS, display_rows(group),
                         bold={(i, 3) for i in best}))
    return out
