"""One trial inside its MLflow run, and the Ray Tune trainable around it: placement, epoch
checkpoints through Tune's checkpoint API, resume from them, and user errors that are not retried.

A checkpoint (``peftbench.train.checkpointing``: what trains, optimizer, scheduler, scaler, RNG,
epoch, best validation, plus the MLflow run id) goes to ``tune.report(..., checkpoint=...)``, so Ray
persists it under the suite's Ray storage (``<tuner>/<trial id>/checkpoint_NNNNNN``) and hands it back
through ``tune.get_checkpoint()`` when it retries a crashed trial. A new ``peftbench run`` after the
driver died finds the same folder through the run's ``peftbench.checkpoints`` tag (``run_state``).
Either way the trial continues at the next epoch in the same MLflow run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftbench import cost, ray_cluster, tracking
from peftbench.errors import PeftbenchError
from peftbench.hardware import HARDWARE_TAG, hardware_name, is_gpu
from peftbench.train import checkpointing
from peftbench.train.trial import run_trial

Say = Callable[[str], None]
Report = Callable[[dict, "dict | None"], None]  # (metrics, checkpoint state or None)
RESUMED_TAG = "peftbench.resumed_from_epoch"
RESUMES_TAG = "peftbench.resumes"
_FINAL_PREFIXES = ("test/", "eff/", "time/")


def trial_tags(spec: dict[str, Any]) -> dict[str, str]:
    tags = {"peftbench.fingerprint": spec["fingerprint"], "peftbench.kind": spec["kind"]}
    if spec["kind"] == "trial":
        tags.update({"peftbench.suite": spec["suite"], "peftbench.method": spec["method"]["label"],
                     "peftbench.dataset": spec["dataset"]["label"], "peftbench.split": spec["split"],
                     "peftbench.seed": str(spec["seed"])})
        if spec["dataset"].get("group"):
            tags["peftbench.dataset_group"] = spec["dataset"]["group"]
        if spec.get("report"):  # the suite's `report:` layout, read back by `peftbench report`
            tags["peftbench.report"] = json.dumps(spec["report"], sort_keys=True)
        if spec.get("stage"):  # search, then final (peftbench.search)
            tags["peftbench.stage"] = spec["stage"]
        for key in ("search_point", "search_choice"):
            if key in spec:
                tags[f"peftbench.{key}"] = json.dumps(spec[key], sort_keys=True)
    return tags


class StoppedEarly(Exception):
    """The scheduler (ASHA) stopped this trial: Ray's ``tune.report`` raised SystemExit(0) in it."""


def _stoppable(report: Report | None) -> Report | None:
    if report is None:
        return None

    def wrapped(metrics: dict, state: dict | None = None) -> None:
        try:
            report(metrics, state)
        except SystemExit as stop:
            raise StoppedEarly from stop

    return wrapped


def tracked_trial(spec: dict[str, Any], uri: str, experiment: str, report: Report | None = None,
                  progress: Say | None = None, extra_tags: dict[str, str] | None = None, gpus: float | None = None,
                  resume: dict[str, Any] | None = None, checkpoint_every: int | None = None) -> dict | None:
    """Run one trial inside its MLflow run (FINISHED, or FAILED with the error); None if a scheduler stopped it.

    ``gpus``: what the trial holds, for GPU-hours (``peftbench.cost``); None = its processes' GPUs here.
    ``report(metrics, state)``: per epoch; ``state`` (a checkpoint, with the run id) every
    ``checkpoint_every`` epochs, or at each validation when None. ``resume``: such a state; the
    trial continues after its epoch, in its MLflow run.
    """
    params = tracking.flatten_config({k: v for k, v in spec.items() if k not in ("fingerprint", "run_name")})
    device = hardware_name()
    tags = {**trial_tags(spec), HARDWARE_TAG: device, **(extra_tags or {})}
    if gpus is None:
        gpus = 0.0 if not is_gpu(device) else float(spec.get("train", {}).get("data_parallel", 1))
    with tracking.TrialRun(uri, experiment, spec["run_name"], tags, params,
                           run_id=resume["run_id"] if resume else None) as run:
        if run.was_finished:  # killed after it ended: its numbers stand
            return {k: v for k, v in run.previous.data.metrics.items() if k.startswith(_FINAL_PREFIXES)}
        if resume:
            run.set_tags({RESUMED_TAG: str(resume["epoch"]),
                          RESUMES_TAG: str(int(run.previous.data.tags.get(RESUMES_TAG, 0)) + 1)})
        run.log_metrics({cost.GPUS_METRIC: gpus})
        stoppable = _stoppable(report)
        with_run = None if stoppable is None else (
            lambda metrics, state=None: stoppable(metrics, state and {**state, "run_id": run.run_id}))
        try:
            return run_trial(spec, run, with_run, progress, resume=resume, checkpoint_every=checkpoint_every)
        except StoppedEarly:  # a complete answer for a search: FINISHED, tagged, not rerun
            run.set_tag("peftbench.stopped_early", "scheduler")
            return None


def _worker_placement() -> dict[str, Any]:
    """Where this trial process runs: Ray's GPU ids, CUDA_VISIBLE_DEVICES, the GPU's UUID, pid, host."""
    import socket

    import ray

    info: dict[str, Any] = {"placement/gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
                            "placement/cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                            "placement/pid": os.getpid(), "placement/host": socket.gethostname(),
                            "placement/node_id": ray.get_runtime_context().get_node_id()}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["placement/gpu_uuid"] = str(getattr(props, "uuid", ""))
            info["placement/gpu_name"] = props.name
    except Exception as err:  # noqa: BLE001 - placement is a record, never a reason to fail the trial
        info["placement/gpu_uuid"] = f"unknown ({type(err).__name__})"
    return info


def _tune_report(where: dict[str, Any]) -> Report:
    """Per epoch: metrics to Ray; with a state, a checkpoint folder that Ray persists to its storage."""
    from ray import tune

    def report(metrics: dict, state: dict | None = None) -> None:
        if state is None:
            tune.report({**metrics, **where})
            return
        with tempfile.TemporaryDirectory(prefix="peftbench-checkpoint-") as folder:
            checkpointing.write_folder(folder, state, {"run_id": state["run_id"]})
            tune.report({**metrics, **where}, checkpoint=tune.Checkpoint.from_directory(folder))

    return report


def _restored(config: dict[str, Any]) -> dict[str, Any] | None:
    """The state to resume: Ray's own (it restarted this trial after a crash), else the checkpoint
    that the driver found for this fingerprint (a new ``peftbench run`` after the old one died)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            return checkpointing.load_checkpoint(Path(folder) / checkpointing.STATE_FILE)
    found = config["resume"].get(config["spec"]["fingerprint"])
    return checkpointing.load_checkpoint(Path(found) / checkpointing.STATE_FILE) if found else None


def ray_trainable(config: dict[str, Any]) -> None:
    """The Ray Tune function of one trial. A ``PeftbenchError`` (a user error, or the divergence guard)
    ends it with an ``error`` result instead of raising: Ray retries what raises, and a retry would fail
    the same way. Anything else raises, and Ray retries it from the last checkpoint."""
    from ray import tune

    where = _worker_placement()
    try:
        if config["cwd"]:
            os.chdir(config["cwd"])
        else:  # on a cluster: the worker runs in Ray's copy of the code; data must be on shared storage
            ray_cluster.check_visible(config["spec"])
        # Every result carries the GPU ids (numbers-only loggers skip the strings); the MLflow run gets them as tags.
        tags = {f"peftbench.{k.split('/', 1)[1]}": str(v) for k, v in where.items() if str(v)}
        tags[tracking.DRIVER_TAG] = config["driver"]
        tags[tracking.CHECKPOINTS_TAG] = str(Path(config["ray_dir"]) / tune.get_context().get_trial_id())
        final = tracked_trial(config["spec"], config["uri"], config["experiment"], report=_tune_report(where),
                              extra_tags=tags, gpus=config["gpus"], resume=_restored(config),
                              checkpoint_every=config["checkpoint_every"])
    except PeftbenchError as err:
        tune.report({"error": str(err).strip().splitlines()[0], **where})
        return
    if final is None:  # stopped early by the scheduler: nothing more to report
        return
    # One last result with the trial's final metrics (peak GPU memory, step time, test mIoU) for Ray's records.
    tune.report({**{k: v for k, v in final.items() if not k.startswith("test/iou/")}, **where, "final": 1})
