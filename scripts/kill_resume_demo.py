"""Kill one trial's worker mid-way on a 2-node Ray cluster and check that the suite still ends right.

A 4-trial micro suite (tiny backbone, synthetic data, CPU) runs with ``peftbench run --address`` on a
two-node Ray cluster on 127.0.0.1 (``ray.cluster_utils.Cluster``: a head and a worker raylet, one CPU
each). Once a trial has written its checkpoint of epoch 2, its worker process gets ``kill -9``. Checked
at the end: 4 MLflow runs, all FINISHED, none RUNNING; the killed trial resumed from its checkpoint
(``peftbench.resumed_from_epoch``) in the same run, each epoch logged once (no epoch repeated).

    python scripts/kill_resume_demo.py [FOLDER]      # exit 0 when every check holds

Prints one summary line (the README's measured line). FOLDER (default: a temporary folder) keeps the
suite, the MLflow database and Ray's storage for a look afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peftbench import tracking  # noqa: E402
from peftbench.train.checkpointing import latest_folder, read_meta  # noqa: E402

EPOCHS = 8
MICRO = {"enc_depths": [1, 1, 1, 1, 1], "enc_channels": [8, 16, 16, 32, 32], "enc_num_head": [1, 1, 1, 2, 2],
         "enc_patch_size": [32, 32, 32, 32, 32], "drop_path": 0.0}
SUITE = {"name": "killdemo", "backbone": {"config": "tiny", "overrides": MICRO},
         "datasets": [{"name": "synthetic", "domain": "target", "root": "data/tgt", "scenes": {"train": 4, "val": 1},
                       "points_per_m2": 15}],
         "methods": ["linear", {"name": "gem", "settings": {"rank": 2}}], "seeds": [0, 1],
         "train": {"epochs": EPOCHS, "batch_size": 2, "grid_size": 0.1},
         "resources": {"cpus_per_trial": 1, "max_failures": 2}}


def _kill_after_checkpoint(uri: str, done: threading.Event, killed: dict) -> None:
    """Poll MLflow; kill -9 the worker of the first RUNNING trial whose checkpoint of epoch >= 2 exists."""
    while not done.is_set():
        time.sleep(0.2)
        try:
            c = tracking.client(uri)
            exp = c.get_experiment_by_name(SUITE["name"])
            runs = [] if exp is None else c.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")
        except Exception:  # noqa: BLE001 - the store may be busy or not created yet: poll again
            continue
        for run in runs:
            folder, pid = run.data.tags.get(tracking.CHECKPOINTS_TAG), run.data.tags.get("peftbench.pid")
            latest = latest_folder(folder) if folder else None
            epoch = read_meta(latest)["epoch"] if latest else 0
            if pid and 2 <= epoch < EPOCHS:
                os.kill(int(pid), signal.SIGKILL)
                killed.update(run_id=run.info.run_id, name=run.info.run_name, pid=int(pid), epoch=epoch)
                return


def main(folder: Path) -> int:
    from ray.cluster_utils import Cluster

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(yaml.safe_dump(SUITE))
    uri = f"sqlite:///{folder.resolve()}/mlflow.db"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        done, killed = threading.Event(), {}
        watcher = threading.Thread(target=_kill_after_checkpoint, args=(uri, done, killed), daemon=True)
        start = time.perf_counter()
        watcher.start()
        run = subprocess.run([sys.executable, "-m", "peftbench", "run", "suite.yaml", "--tracking-uri", uri,
                              "--address", cluster.address], cwd=folder, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        done.set()
    finally:
        cluster.shutdown()
    return _check(uri, run, killed, wall)


def _check(uri: str, run: subprocess.CompletedProcess, killed: dict, wall: float) -> int:
    c = tracking.client(uri)
    runs = c.search_runs([c.get_experiment_by_name(SUITE["name"]).experiment_id])
    statuses = [r.info.status for r in runs]
    problems = [] if run.returncode == 0 else [f"peftbench run exited {run.returncode}"]
    if not killed:
        problems.append("no worker was killed (every trial ended before its checkpoint of epoch 2 was seen)")
    else:
        victim = next(r for r in runs if r.info.run_id == killed["run_id"])
        steps = [m.step for m in c.get_metric_history(victim.info.run_id, "train/loss")]
        resumed = victim.data.tags.get("peftbench.resumed_from_epoch")
        if resumed is None or int(resumed) < 2:
            problems.append(f"the killed trial did not resume from its checkpoint (resumed_from_epoch {resumed})")
        if sorted(steps) != list(range(1, EPOCHS + 1)):
            problems.append(f"the killed trial's epochs in MLflow: {sorted(steps)}")
        killed.update(resumed=resumed, steps=len(steps))
    if len(runs) != 4 or statuses.count("FINISHED") != 4:
        problems.append(f"{len(runs)} runs: {statuses}")
    print(f"{date.today()}: 4-trial suite ({EPOCHS} epochs each) on a 2-node Ray cluster on 127.0.0.1, "
          f"kill -9 of {killed.get('name')}'s worker (pid {killed.get('pid')}) after its checkpoint of epoch "
          f"{killed.get('epoch')}: {statuses.count('FINISHED')}/{len(runs)} MLflow runs FINISHED, "
          f"{statuses.count('RUNNING')} RUNNING; the killed trial resumed from epoch {killed.get('resumed')} in the "
          f"same run, {killed.get('steps')} epochs logged once each; wall {wall:.0f} s")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if problems:
        print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
    return 1 if problems else 0


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="peftbench-killdemo-"))
    sys.exit(main(target))
