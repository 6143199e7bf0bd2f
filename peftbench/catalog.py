"""What ``peftbench suites`` prints: every built-in suite with its trial count, where it runs and
the settings it needs before it can start (environment variables, checkpoint, GPUs)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

from peftbench.builtin_suites import BUILTIN_SUITES_DIR, builtin_suites, required_variables
from peftbench.errors import PeftbenchError
from peftbench.hub import hub_reference
from peftbench.suite import load_suite, trial_specs


@dataclass
class SuiteInfo:
    name: str
    trials: int | None
    device: str
    needs: list[str]
    description: str


def describe(path: Path) -> SuiteInfo:
    """Trial count and needs of one suite file (an invalid suite says why instead)."""
    variables = required_variables(path)
    try:
        suite = load_suite(path)
    except PeftbenchError as err:
        return SuiteInfo(path.stem, None, "?", [f"invalid: {err}"], "")
    needs = [f"${name}" for name in variables]
    checkpoint = suite.backbone.checkpoint
    if checkpoint == "pretrain":
        needs.append("nothing to download (synthetic data; pretrains its own backbone)")
    elif checkpoint and "$" not in checkpoint:
        hub_file = hub_reference(checkpoint)
        needs.append(f"downloads {hub_file} (HF cache)" if hub_file else f"checkpoint file {checkpoint}")
    gpus = suite.resources.gpus_per_trial
    device = f"{gpus:g} GPU/trial" if gpus else "CPU"
    return SuiteInfo(suite.name, len(trial_specs(suite)), device, needs or ["nothing"], suite.description.strip())


def suites_table() -> str:
    rows = [describe(path) for path in builtin_suites().values()]
    lines = [f"built-in suites in {BUILTIN_SUITES_DIR} (run one with `peftbench run NAME`; "
             "`peftbench suites NAME` prints it to copy and edit):"]
    for row in rows:
        trials = f"{row.trials} trials" if row.trials is not None else "?"
        lines.append(f"  {row.name:<16} {trials:>10}  {row.device:<14} needs: {', '.join(row.needs)}")
        lines += textwrap.wrap(row.description, 100, initial_indent=" " * 20, subsequent_indent=" " * 20)
    return "\n".join(lines)
