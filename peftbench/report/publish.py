"""A report is also an MLflow run: kind ``report`` in the experiment it describes, with the report
folder as artifacts, so the MLflow UI shows it. It has no fingerprint, so resume (which skips
FINISHED fingerprints) and the tables (which read kind ``trial``) never count it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from peftbench import tracking
from peftbench.report.frame import experiment_id


def log_report_run(uri: str, experiment: str, folder: Path, experiments: Sequence[str]) -> str:
    """Create a FINISHED ``report`` run holding ``folder`` under artifact path ``report``; its id."""
    c = tracking.client(uri)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    tags = {"peftbench.kind": "report", "peftbench.report_of": ",".join(experiments)}
    run = c.create_run(experiment_id(uri, experiment), tags=tags, run_name=f"report {stamp}")
    status = "FAILED"
    try:
        c.log_artifacts(run.info.run_id, str(folder), "report")
        status = "FINISHED"
    finally:  # never leave a RUNNING run behind, whatever failed
        c.set_terminated(run.info.run_id, status=status)
    return run.info.run_id
