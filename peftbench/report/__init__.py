"""Reports from MLflow: tidy frames -> tables (md, tex, csv), figures (png, svg), index.html.

``write_report`` reads MLflow only; it never re-runs anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from peftbench.errors import PeftbenchError
from peftbench.report import figures, render, summary as page, tables
from peftbench.report.ablation import ablation_tables, layout_of
from peftbench.report.compare import combine
from peftbench.report.cross_dataset import cross_dataset_table, points_of
from peftbench.report.data_efficiency import curve_frame, data_efficiency_tables, has_data_efficiency, split_amount
from peftbench.report.efficiency import efficiency_frame, efficiency_tables
from peftbench.report.figures_data import plot_data_efficiency
from peftbench.report.figures_tradeoff import plot_tradeoff
from peftbench.report.figures_views import plot_cross_dataset, plot_significance
from peftbench.report.folds import add_fold_rows
from peftbench.report.frame import class_names, histories_of, load_histories, load_runs
from peftbench.report.html import markdown_to_html
from peftbench.report.search_view import search_table, split_stages
from peftbench.report.significance import significance_tables, verdicts
from peftbench.report.stats import significance
from peftbench.report.style import method_colors
from peftbench.report.tables import per_class_table, summary_table
from peftbench.tracking import resolve_tracking_uri

__all__ = ["load_histories", "load_runs", "per_class_table", "summary_table", "write_report"]

DEFAULT_BASELINE = "linear"


def _shown_uri(uri: str) -> str:
    """A sqlite URI under the working directory is shown relative: reports get committed."""
    prefix = f"sqlite:///{Path.cwd()}/"
    return "sqlite:///" + uri[len(prefix):] if uri.startswith(prefix) else uri


def load_experiments(uri: str, experiments: Sequence[str]) -> pd.DataFrame:
    """Trial runs of every experiment (``method@experiment`` where a method is in several)."""
    frames = {}
    for name in experiments:
        frames[name] = load_runs(uri, name)
        if frames[name].empty:
            raise PeftbenchError(
                f"MLflow experiment {name!r} has no trial runs (tag peftbench.kind=trial); "
                f"run a suite into it first or pick another --experiment"
            )
    return combine(frames)


def write_report(uri: str, experiment: str | Sequence[str], out_dir: Path,
                 method_order: Sequence[str] | None = None, baseline: str | None = None,
                 layout: dict[str, Any] | None = None, log_to_mlflow: bool = False,
                 say: Callable[[str], None] | None = None) -> list[Path]:
    """Write summary.md/.tex/.csv, index.html, runs.csv, per-view CSVs and figures into ``out_dir``.

    ``experiment``: one name, or several to put side by side. ``baseline``: the method differences
    and ratios are taken against (default: the suite's ``report.baseline``, else ``linear``).
    ``layout``: a suite's ``report:`` block (default: the one logged with the runs).
    ``log_to_mlflow``: also store the folder as a ``report`` run of the (first) experiment.
    ``say`` receives the significance verdicts. Returns the written paths.
    """
    uri = resolve_tracking_uri(uri)
    experiments = [experiment] if isinstance(experiment, str) else list(experiment)
    runs, search = split_stages(load_experiments(uri, experiments))
    if runs.empty:
        raise PeftbenchError(f"{' + '.join(experiments)} has search runs only; report it once the final runs "
                             "have started (peftbench run SUITE continues the suite)")
    runs = add_fold_rows(uri, runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if layout is None:
        layout, warning = layout_of(runs)
        notes += [warning] if warning else []
    baseline = baseline or (layout or {}).get("baseline") or DEFAULT_BASELINE
    methods = tables.ordered(runs["method"].tolist(), method_order)
    colors = method_colors(methods)
    summary = summary_table(runs, tables.REPORT_METRICS, methods)
    per_class = per_class_table(runs, class_names(uri, runs), methods)
    histories = histories_of(uri, runs[runs["kind"] != "combined"], "val/mIoU")
    diffs = significance(runs, methods, baseline)
    miou = {(r.dataset, r.split, r.method): r.mIoU_mean for r in summary.itertuples(index=False)}
    eff = efficiency_frame(runs, methods, miou)

    written: list[Path] = []

    def put(name: str, content: str) -> None:
        (out_dir / name).write_text(content, encoding="utf-8")
        written.append(out_dir / name)

    searched = search_table(runs, search, methods)
    # A data-efficiency suite has a results table per split: its pivot comes first, the rest at the end.
    limited = summary["split"].map(lambda sp: split_amount(sp) is not None)
    first, rest = (summary[~limited], summary[limited]) if (~limited).any() else (summary, summary.iloc[:0])
    sections = [page.Section("Results", notes, render.results_tables(first) + ([searched] if searched else [])),
                _significance_section(diffs, methods, baseline, out_dir, colors, written)]
    sections += _paper_views(runs, summary, diffs, layout, methods, out_dir, colors, written)
    sections.append(page.Section("Efficiency (the paper's Table 7 layout)", [],
                                 efficiency_tables(eff, methods, baseline),
                                 _tradeoff_figures(summary, eff, out_dir, colors, written)))
    per_class_views = [render.Table(f"{d} — split `{g['split'].iloc[0]}`", *tables.per_class_rows(g))
                       for d, g in per_class.groupby("dataset", sort=False)]
    sections.append(page.Section("Per-class IoU", [], [t for t in per_class_views if len(t.headers) > 1],
                                 [("per_class_iou", "Per-class test IoU (%)")]))
    if not rest.empty:
        sections.append(page.Section("Results of the limited splits", [], render.results_tables(rest)))
    sections.append(page.Section("Training curves", [], [], [("curves", "Validation mIoU per epoch")]))
    written += figures.plot_per_class_iou(per_class, out_dir / "per_class_iou")
    written += figures.plot_curves(histories, out_dir / "curves", methods, colors)

    runs.drop(columns=["report_layout"]).to_csv(out_dir / "runs.csv", index=False)
    summary.to_csv(out_dir / "summary.csv", index=False)
    eff.to_csv(out_dir / "efficiency.csv", index=False)
    pd.DataFrame([{"dataset": d, "split": s, "method": m, "baseline": p.baseline, "paired_seeds": p.n,
                   "delta": p.mean, "ci_low": p.low, "ci_high": p.high, "significant": p.significant}
                  for (d, s, m), p in diffs.items()]).to_csv(out_dir / "significance.csv", index=False)
    written += [out_dir / n for n in ("runs.csv", "summary.csv", "efficiency.csv", "significance.csv")]
    all_tables = [t for s in sections for t in s.tables]
    put("summary.tex", "% generated by peftbench; needs \\usepackage{booktabs}\n"
        + "\n".join(render.latex(t) for t in all_tables))
    failed = runs[runs["status"].isin(["FAILED", "KILLED"]) & (runs["kind"] != "combined")]
    text = page.compose(page.header(experiments, _shown_uri(uri), runs, baseline), sections, failed)
    put("summary.md", text)
    put("index.html", markdown_to_html(text, f"peftbench report: {' + '.join(experiments)}"))
    for line in verdicts(diffs) if say else []:
        say(line)
    if log_to_mlflow:
        from peftbench.report.publish import log_report_run

        run_id = log_report_run(uri, experiments[0], out_dir, experiments)
        if say:
            say(f"logged the report to MLflow: experiment {experiments[0]!r}, run {run_id} (kind report)")
    return written


def _significance_section(diffs: dict, methods: list[str], baseline: str, out_dir: Path, colors: dict[str, Any],
                          written: list[Path]) -> page.Section:
    written += plot_significance(diffs, out_dir / "significance", colors)
    return page.Section(f"Significance against `{baseline}`", page.significance_intro(verdicts(diffs), baseline),
                        significance_tables(diffs, methods),
                        [("significance", "Paired difference to the baseline with its 95 % interval")])


def _paper_views(runs: pd.DataFrame, summary: pd.DataFrame, diffs: dict, layout: dict[str, Any] | None,
                 methods: list[str], out_dir: Path, colors: dict[str, Any], written: list[Path]) -> list[page.Section]:
    """The views that appear when the runs have their shape: Tables 1 and 2, ablation tables."""
    sections = []
    cross = cross_dataset_table(summary, runs, methods)
    if cross is not None:
        written += plot_cross_dataset(*points_of(runs), out_dir / "cross_dataset", methods, colors)
        sections.append(page.Section("Across datasets (the paper's Table 1 layout)", [], [cross],
                                     [("cross_dataset", "Test mIoU across datasets, std over seeds as error bars")]))
    if has_data_efficiency(runs):
        written += plot_data_efficiency(curve_frame(runs), out_dir / "data_efficiency", methods, colors)
        sections.append(page.Section("Data efficiency (the paper's Table 2 layout)", [],
                                     data_efficiency_tables(summary, runs, methods),
                                     [("data_efficiency", "Test mIoU vs. training data, mean ± std over seeds")]))
    ablations = ablation_tables(summary, diffs, layout)
    if ablations:
        sections.append(page.Section("Ablations (the suite's `report:` tables)", [], ablations))
    return sections


def _tradeoff_figures(summary: pd.DataFrame, eff: pd.DataFrame, out_dir: Path, colors: dict[str, Any],
                      written: list[Path]) -> list[tuple[str, str]]:
    """mIoU vs params (per dataset and split), vs latency and vs peak memory (per hardware)."""
    params = summary.drop(columns=["mIoU"]).rename(columns={"mIoU_mean": "mIoU", "trainable_params": "params"})
    params["params"] = params["params"].astype(float)
    written += plot_tradeoff(params, "params", "trainable parameters", ["dataset", "split"],
                             out_dir / "miou_vs_params", colors, "Test mIoU vs. trainable parameters", std="mIoU_std")
    figs = [("miou_vs_params", "Test mIoU vs. trainable parameters (dashed: Pareto front)")]
    for stem, col, label in [("miou_vs_latency", "eff/latency_ms", "inference latency per scene (ms)"),
                             ("miou_vs_memory", "eff/peak_mem_mb", "peak memory (MB)")]:
        frame = eff if not eff.empty else pd.DataFrame(columns=["dataset", "hardware", "method", col, "mIoU"])
        written += plot_tradeoff(frame, col, label, ["dataset", "hardware"], out_dir / stem, colors,
                                 f"Test mIoU vs. {label.split(' (')[0]}", log_x=False)
        figs.append((stem, f"Test mIoU vs. {label}, per hardware (dashed: Pareto front)"))
    return figs
