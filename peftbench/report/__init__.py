"""Reports from MLflow: tidy frames -> tables (md, tex, csv) and figures (png, svg).

``write_report`` reads MLflow only; it never re-runs anything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from peftbench.errors import PeftbenchError
from peftbench.report import figures, tables
from peftbench.report.folds import add_fold_rows
from peftbench.report.frame import class_names, histories_of, load_histories, load_runs
from peftbench.report.tables import per_class_table, summary_table
from peftbench.tracking import resolve_tracking_uri

__all__ = ["load_histories", "load_runs", "per_class_table", "summary_table", "write_report"]

_FIGURES = [
    ("miou_vs_params", "Test mIoU vs. trainable parameters"),
    ("curves", "Validation mIoU per epoch"),
    ("per_class_iou", "Per-class test IoU"),
]


def _markdown(experiment: str, uri: str, runs: pd.DataFrame, summary: pd.DataFrame,
              per_class: pd.DataFrame) -> str:
    counts = runs["status"].value_counts()
    status = ", ".join(f"{counts[s]} {s.lower()}" for s in counts.index)
    suites = ", ".join(f"`{s}`" for s in tables.ordered(runs["suite"].dropna().tolist())) or "—"
    out = [
        f"# peftbench report: {experiment}", "",
        f"- Experiment: `{experiment}` (tracking URI `{_shown_uri(uri)}`)",
        f"- Generated: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Suites: {suites}",
        f"- Trial runs: {len(runs)} ({status})", "",
        "Test metrics in %, mean ± sample std over finished seeds (one seed: the value alone); "
        "best mIoU in bold. Trainable % = 100 × trainable / total parameters. "
        "\"failed (k)\": no seed finished and k failed; \"—\": no run.", "",
        "## Results", "",
    ]
    for (dataset, split), group in summary.groupby(["dataset", "split"], sort=False):
        out += [f"### {dataset} — split `{split}`", "", tables.summary_markdown(group), ""]
    out += ["## Per-class IoU", ""]
    for dataset, group in per_class.groupby("dataset", sort=False):
        out += [f"### {dataset} — split `{group['split'].iloc[0]}`", "",
                tables.per_class_markdown(group.dropna(axis=1, how="all")), ""]
    out += ["## Figures", ""]
    for stem, caption in _FIGURES:
        out += [f"### {caption}", "", f"![{caption}]({stem}.png)", "",
                f"Vector version: [{stem}.svg]({stem}.svg)", ""]
    failed = runs[runs["status"].isin(["FAILED", "KILLED"])]
    if not failed.empty:
        out += ["## Failed runs", ""]
        out += [f"- `{r.run_name}` ({r.status}, run id `{r.run_id}`): {r.error or 'no error recorded'}"
                for r in failed.itertuples(index=False)]
        out.append("")
    return "\n".join(out)


def _shown_uri(uri: str) -> str:
    """A sqlite URI under the working directory is shown relative: reports get committed."""
    prefix = f"sqlite:///{Path.cwd()}/"
    return "sqlite:///" + uri[len(prefix):] if uri.startswith(prefix) else uri


def write_report(uri: str, experiment: str, out_dir: Path,
                 method_order: Sequence[str] | None = None) -> list[Path]:
    """Write summary.md/.csv/.tex, runs.csv and the figures (.png + .svg) into ``out_dir``.

    Returns the written paths. Raises PeftbenchError for an unknown experiment or one without
    trial runs.
    """
    uri = resolve_tracking_uri(uri)
    runs = load_runs(uri, experiment)
    if runs.empty:
        raise PeftbenchError(
            f"MLflow experiment {experiment!r} has no trial runs (tag peftbench.kind=trial); "
            f"run a suite into it first or pick another --experiment"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = add_fold_rows(uri, runs)
    methods = tables.ordered(runs["method"].tolist(), method_order)
    summary = summary_table(runs, tables.REPORT_METRICS, methods)
    per_class = per_class_table(runs, class_names(uri, runs), methods)
    histories = histories_of(uri, runs[runs["kind"] != "combined"], "val/mIoU")

    written: list[Path] = []

    def text(name: str, content: str) -> None:
        path = out_dir / name
        path.write_text(content, encoding="utf-8")
        written.append(path)

    runs.to_csv(out_dir / "runs.csv", index=False)
    summary.to_csv(out_dir / "summary.csv", index=False)
    written += [out_dir / "runs.csv", out_dir / "summary.csv"]
    text("summary.tex", tables.summary_latex(summary))
    written += figures.plot_miou_vs_params(summary, out_dir / "miou_vs_params")
    written += figures.plot_curves(histories, out_dir / "curves", methods)
    written += figures.plot_per_class_iou(per_class, out_dir / "per_class_iou")
    text("summary.md", _markdown(experiment, uri, runs, summary, per_class))
    return written
