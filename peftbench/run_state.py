"""Keep the store's invariants true: no RUNNING run without a live owner, one FINISHED run per
fingerprint, and a count of what one `peftbench run` left behind (for its summary).

Run with the experiment lock held (``peftbench.store_lock``): then every RUNNING run that this
process did not start belongs to a run that is gone, or to a trial process outliving it briefly.
"""

from __future__ import annotations

import time
from typing import Any

from peftbench.owner import Owner, this_process
from peftbench.tracking import CHECKPOINTS_TAG, DRIVER_TAG, OWNER_TAG, client, iter_runs

NOTE_TAG = "peftbench.note"


def _experiment_id(uri: str, experiment: str) -> tuple[Any, str | None]:
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c, (exp.experiment_id if exp is not None and exp.lifecycle_stage == "active" else None)


def _is_orphan(run: Any, me: Owner) -> bool:
    """Owner gone (on this host), or its driver gone and its owner not known to be alive here."""
    tags = run.data.tags
    owner, driver = Owner.parse(tags.get(OWNER_TAG)), Owner.parse(tags.get(DRIVER_TAG))
    if driver is not None and driver == me:
        return False
    if owner is None:  # written before owners were recorded: nobody holds the lock, so nobody runs it
        return True
    if owner.is_local():
        return not owner.is_alive()
    return driver is not None and driver.is_local() and not driver.is_alive()


def _kill(c: Any, run: Any, note: str, status: str = "KILLED") -> None:
    c.set_tag(run.info.run_id, NOTE_TAG, note)
    if status == "FAILED":  # reports list a failed run with its cause
        c.set_tag(run.info.run_id, "peftbench.error", note)
    c.set_terminated(run.info.run_id, status=status, end_time=int(time.time() * 1000))


def close_orphans(uri: str, experiment: str) -> list[str]:
    """Mark RUNNING runs whose owner is gone KILLED (with a note); returns their run names."""
    c, exp_id = _experiment_id(uri, experiment)
    if exp_id is None:
        return []
    me = this_process()
    closed = []
    for run in iter_runs(c, exp_id, "attributes.status = 'RUNNING'"):
        if _is_orphan(run, me):
            owner = run.data.tags.get(OWNER_TAG, "an unrecorded process")
            _kill(c, run, f"its owner ({owner}) was gone; marked KILLED by peftbench run {me.token}")
            closed.append(run.info.run_name)
    return closed


def close_session(uri: str, experiment: str, driver: str, note: str, status: str = "KILLED") -> int:
    """After an interruption (or once Ray is done): mark this driver's runs that are still RUNNING
    ``status`` (KILLED: interrupted; FAILED: their process died)."""
    c, exp_id = _experiment_id(uri, experiment)
    if exp_id is None:
        return 0
    runs = iter_runs(c, exp_id, f"attributes.status = 'RUNNING' and tags.`{DRIVER_TAG}` = '{driver}'")
    for run in runs:
        _kill(c, run, note, status)
    return len(runs)


def checkpoints_to_resume(uri: str, experiment: str) -> dict[str, str]:
    """Fingerprint -> the last checkpoint folder of its newest unfinished run (KILLED, FAILED) that
    wrote one (tag ``peftbench.checkpoints``, kept by Ray's storage); the trial continues in that run.
    A checkpoint whose run id is another run's is not used (a folder is one run's)."""
    from peftbench.train.checkpointing import latest_folder, read_meta

    c, exp_id = _experiment_id(uri, experiment)
    if exp_id is None:
        return {}
    found: dict[str, str] = {}
    for run in iter_runs(c, exp_id, "attributes.status != 'FINISHED' and attributes.status != 'RUNNING'"):
        fp, folder = run.data.tags.get("peftbench.fingerprint"), run.data.tags.get(CHECKPOINTS_TAG)
        latest = latest_folder(folder) if fp and folder else None
        if latest is not None and read_meta(latest).get("run_id") == run.info.run_id:
            found[fp] = str(latest)  # oldest first: the newest run wins
    return found


def session_statuses(uri: str, experiment: str, driver: str) -> dict[str, str]:
    """Fingerprint -> status of the runs that the driver ``driver`` started (the last one wins)."""
    c, exp_id = _experiment_id(uri, experiment)
    if exp_id is None:
        return {}
    runs = iter_runs(c, exp_id, f"tags.`{DRIVER_TAG}` = '{driver}'")
    return {r.data.tags.get("peftbench.fingerprint", ""): r.info.status for r in runs}


def remove_duplicate_finished(uri: str, experiment: str) -> list[str]:
    """Keep the newest FINISHED run of each fingerprint; older ones are deleted (MLflow's soft
    delete: `mlflow runs restore --run-id ID` brings one back). Returns the deleted run ids."""
    c, exp_id = _experiment_id(uri, experiment)
    if exp_id is None:
        return []
    newest: dict[str, Any] = {}
    deleted = []
    for run in iter_runs(c, exp_id, "attributes.status = 'FINISHED'"):  # oldest first
        fp = run.data.tags.get("peftbench.fingerprint")
        if fp is None:
            continue
        if fp in newest:
            old = newest[fp]
            c.set_tag(old.info.run_id, NOTE_TAG, f"superseded by run {run.info.run_id} (same fingerprint)")
            c.delete_run(old.info.run_id)
            deleted.append(old.info.run_id)
        newest[fp] = run
    return deleted
