"""What ``peftbench suites`` prints: every built-in suite with its trial count, where it runs and
the settings it needs before it can start (environment variables, checkpoint, GPUs)."""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass
from pathlib import Path

from peftbench.builtin_suites import BUILTIN_SUITES_DIR, builtin_suites, required_variables
from peftbench.errors import PeftbenchError
from peftbench.hub import hub_reference
from peftbench.search import search_specs
from peftbench.suite import load_suite, trial_specs


@dataclass
class SuiteInfo:
    name: str
    trials: int | None
    search_trials: int
    device: str
    needs: list[str]
    description: str


def describe(path: Path) -> SuiteInfo:
    """Trial count and needs of one suite file (an invalid suite says why instead)."""
    variables = required_variables(path)
    try:
        suite = load_suite(path)
    except PeftbenchError as err:
        return SuiteInfo(path.stem, None, 0, "?", [f"invalid: {err}"], "")
    needs = [f"${name}" for name in variables]
    checkpoint = suite.backbone.checkpoint
    if checkpoint == "pretrain":
        needs.append("nothing to download (synthetic data; pretrains its own backbone)")
    elif checkpoint and "$" not in checkpoint:
        hub_file = hub_reference(checkpoint)
        needs.append(f"downloads {hub_file} (HF cache)" if hub_file else f"checkpoint file {checkpoint}")
    gpus = suite.resources.gpus_per_trial
    device = f"{gpus:g} GPU/trial" if gpus else "CPU"
    searched = search_specs(suite)
    # As `peftbench run`: with a search, the final trials run the `final:` seeds.
    finals = trial_specs(dataclasses.replace(suite, seeds=suite.final.seeds) if searched and suite.final else suite)
    return SuiteInfo(suite.name, len(finals), len(searched), device, needs or ["nothing"], suite.description.strip())


def suites_table() -> str:
    rows = [describe(path) for path in builtin_suites().values()]
    lines = [f"built-in suites in {BUILTIN_SUITES_DIR} (run one with `peftbench run NAME`; "
             "`peftbench suites NAME` prints it to copy and edit):"]
    for row in rows:
        trials = f"{row.trials} trials" if row.trials is not None else "?"
        trials += f" + {row.search_trials} search" if row.search_trials else ""
        lines.append(f"  {row.name:<16} {trials:>10}  {row.device:<14} needs: {', '.join(row.needs)}")
        lines += textwrap.wrap(row.description, 100, initial_indent=" " * 20, subsequent_indent=" " * 20)
    return "\n".join(lines)
