"""summary.md: every table and figure of a report in one Markdown page, sections in the order a
reader of the paper asks: results, is it more than noise, across datasets, with less data,
ablations, at what cost."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pandas as pd

from peftbench.report import tables
from peftbench.report.render import Table, markdown
from peftbench.report.stats import TEST_TEXT


@dataclasses.dataclass
class Section:
    title: str
    intro: list[str] = dataclasses.field(default_factory=list)     # paragraphs / bullet lines
    tables: list[Table] = dataclasses.field(default_factory=list)
    figures: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (stem, caption)


def figure_markdown(stem: str, caption: str) -> str:
    return f"![{caption}]({stem}.png)\n\n*{caption}* — vector version: [{stem}.svg]({stem}.svg)\n"


def header(experiments: list[str], uri: str, runs: pd.DataFrame, baseline: str) -> list[str]:
    counts = runs.loc[runs["kind"] != "combined", "status"].value_counts()
    status = ", ".join(f"{counts[s]} {s.lower()}" for s in counts.index)
    suites = ", ".join(f"`{s}`" for s in tables.ordered(runs["suite"].dropna().tolist())) or "—"
    hardware = tables.ordered(runs["hardware"].dropna().tolist())
    names = " + ".join(experiments)
    out = [f"# peftbench report: {names}", ""]
    out.append(f"- Experiment{'s' if len(experiments) > 1 else ''}: {', '.join(f'`{e}`' for e in experiments)} "
               f"(tracking URI `{uri}`)")
    if len(experiments) > 1:
        out.append("- A method run in more than one experiment appears once per experiment as `method@experiment`.")
    out += [f"- Generated: {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
            f"- Suites: {suites}",
            f"- Trial runs: {int(counts.sum())} ({status})",
            f"- Hardware: {', '.join(hardware) if hardware else 'unknown (runs without a hardware tag)'}",
            f"- Baseline for differences and ratios: `{baseline}`", "",
            "Test metrics in %, mean ± sample std over finished seeds (one seed: the value alone); "
            "best mIoU in bold. Trainable % = 100 × trainable / total parameters. "
            "\"failed (k)\": no seed finished and k failed; \"—\": no run.", ""]
    return out


def compose(head: list[str], sections: list[Section], failed: pd.DataFrame) -> str:
    out = list(head)
    for s in sections:
        out += [f"## {s.title}", ""]
        for line in s.intro:
            out += [line, ""]
        for t in s.tables:
            out.append(markdown(t))
        for stem, caption in s.figures:
            out.append(figure_markdown(stem, caption))
    if not failed.empty:
        out += ["## Failed runs", ""]
        out += [f"- `{r.run_name}` ({r.status}, run id `{r.run_id}`): {r.error or 'no error recorded'}"
                for r in failed.itertuples(index=False)]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def significance_intro(verdicts: list[str], baseline: str) -> list[str]:
    if not verdicts:
        return [f"No method shares a dataset and split with the baseline `{baseline}`: nothing to compare."]
    return [TEST_TEXT, "\n".join(f"- {v}" for v in verdicts)]


def figure_paths(sections: list[Section]) -> list[Path]:
    return [Path(f"{stem}.{ext}") for s in sections for stem, _ in s.figures for ext in ("png", "svg")]
