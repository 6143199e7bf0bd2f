"""Ray Tune orchestration: one trial per spec, resources from the suite, resume from MLflow."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftbench import cost, ray_cluster, tracking
from peftbench.data.sources import prepare_dataset, resolve_file
from peftbench.errors import PeftbenchError
from peftbench.suite import Suite, pretrain_spec
from peftbench.train.trial import ensure_pretrained, run_trial

Say = Callable[[str], None]


def trial_tags(spec: dict[str, Any]) -> dict[str, str]:
    tags = {"peftbench.fingerprint": spec["fingerprint"], "peftbench.kind": spec["kind"]}
    if spec["kind"] == "trial":
        tags.update({"peftbench.suite": spec["suite"], "peftbench.method": spec["method"]["label"],
                     "peftbench.dataset": spec["dataset"]["label"], "peftbench.split": spec["split"],
                     "peftbench.seed": str(spec["seed"])})
        if spec["dataset"].get("group"):
            tags["peftbench.dataset_group"] = spec["dataset"]["group"]
        if spec.get("stage"):  # search, then final (peftbench.search)
            tags["peftbench.stage"] = spec["stage"]
        for key in ("search_point", "search_choice"):
            if key in spec:
                tags[f"peftbench.{key}"] = json.dumps(spec[key], sort_keys=True)
    return tags


class StoppedEarly(Exception):
    """The scheduler (ASHA) stopped this trial: Ray's ``tune.report`` raised SystemExit(0) in it."""


def _stoppable(report: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
    if report is None:
        return None

    def wrapped(metrics: dict) -> None:
        try:
            report(metrics)
        except SystemExit as stop:
            raise StoppedEarly from stop

    return wrapped


def tracked_trial(spec: dict[str, Any], uri: str, experiment: str, report=None, progress: Say | None = None,
                  extra_tags: dict[str, str] | None = None, gpus: float | None = None) -> dict | None:
    """Run one trial inside its MLflow run (FINISHED, or FAILED with the error); None if a scheduler stopped it.

    ``gpus``: what the trial holds, for GPU-hours (``peftbench.cost``); None = its processes' GPUs here.
    """
    params = tracking.flatten_config({k: v for k, v in spec.items() if k not in ("fingerprint", "run_name")})
    device = cost.device_model()
    tags = {**trial_tags(spec), cost.DEVICE_TAG: device, **(extra_tags or {})}
    if gpus is None:
        gpus = 0.0 if device == "cpu" else float(spec.get("train", {}).get("data_parallel", 1))
    with tracking.TrialRun(uri, experiment, spec["run_name"], tags, params) as run:
        run.log_metrics({cost.GPUS_METRIC: gpus})
        try:
            return run_trial(spec, run, _stoppable(report), progress)
        except StoppedEarly:  # a complete answer for a search: FINISHED, tagged, not rerun
            run.set_tag("peftbench.stopped_early", "scheduler")
            return None


def _absolute(spec: dict[str, Any]) -> dict[str, Any]:
    """Trials may run in another working directory: make every path absolute (fingerprint unchanged)."""
    spec = {**spec, "dataset": dict(spec["dataset"]), "backbone": dict(spec["backbone"])}
    spec["dataset"]["root"] = str(Path(spec["dataset"]["root"]).resolve())
    if spec["backbone"].get("checkpoint"):
        spec["backbone"]["checkpoint"] = str(Path(spec["backbone"]["checkpoint"]).resolve())
    return spec


def run_suite(suite: Suite, specs: list[dict[str, Any]], uri: str, say: Say, sequential: bool = False,
              rerun: bool = False, scheduler: Any = None, address: str | None = None) -> dict[str, Any]:
    """Pretrain if needed, then run every spec not yet FINISHED in MLflow. Returns a summary.

    ``scheduler``: a Ray Tune trial scheduler (the search's ASHA); ignored when sequential.
    ``address``: an existing Ray cluster to run on (``peftbench.ray_cluster``); None: a private Ray here.
    """
    experiment = suite.experiment_name
    tracking.ensure_experiment(uri, experiment)
    for dataset in {s["dataset"]["root"]: s["dataset"] for s in specs}.values():
        prepare_dataset(dataset)  # in the driver: trials never race to generate the same data
    if suite.backbone.checkpoint not in (None, "pretrain"):
        resolve_file(suite.backbone.checkpoint, "backbone.checkpoint")  # missing: one line, before any trial
    pre = pretrain_spec(suite)
    if pre is not None and suite.backbone.checkpoint == "pretrain":
        prepare_dataset(pre["dataset"])
        pre = {**pre, "run_name": f"pretrain/{pre['dataset']['domain'] or pre['dataset']['name']}"}
        say(f"pretraining stage ({pre['backbone']['config']} on {pre['dataset']['root']}) ...")
        start = time.perf_counter()
        ensure_pretrained(pre, lambda: tracking.TrialRun(uri, experiment, pre["run_name"], trial_tags(pre),
                                                         tracking.flatten_config(pre)), say)
        say(f"pretraining stage ready ({time.perf_counter() - start:.0f} s)")
    done = set() if rerun else tracking.finished_fingerprints(uri, experiment)
    todo = [_absolute(s) for s in specs if s["fingerprint"] not in done]
    if len(todo) < len(specs):
        say(f"resume: {len(specs) - len(todo)} of {len(specs)} trials already FINISHED in MLflow, skipped")
    if not todo:
        return {"ran": 0, "failed": []}
    if sequential:
        return _run_sequential(todo, uri, experiment, say)
    return _run_ray(suite, todo, uri, experiment, say, scheduler, address)


def _run_sequential(todo, uri, experiment, say: Say) -> dict[str, Any]:
    failed = []
    for i, spec in enumerate(todo, 1):
        say(f"[{i}/{len(todo)}] {spec['run_name']}")
        try:
            final = tracked_trial(spec, uri, experiment, progress=lambda m: say(f"    {m}"))
            say(f"[{i}/{len(todo)}] {spec['run_name']} done: mIoU {final['test/mIoU']:.3f}")
        except Exception as err:  # noqa: BLE001 - a failed trial is recorded; the suite goes on
            failed.append((spec["run_name"], f"{type(err).__name__}: {err}"))
            say(f"[{i}/{len(todo)}] {spec['run_name']} FAILED: {err}")
    return {"ran": len(todo), "failed": failed}


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


def _ray_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    if config["cwd"]:
        os.chdir(config["cwd"])
    else:  # on a cluster: the worker runs in Ray's copy of the code; data must be on shared storage
        ray_cluster.check_visible(config["spec"])
    where = _worker_placement()
    # Every result carries the GPU ids (numbers-only loggers skip the strings); the MLflow run gets them as tags.
    final = tracked_trial(config["spec"], config["uri"], config["experiment"],
                          report=lambda metrics: tune.report({**metrics, **where}),
                          extra_tags={f"peftbench.{k.split('/', 1)[1]}": str(v) for k, v in where.items() if str(v)},
                          gpus=config["gpus"])
    if final is None:  # stopped early by the scheduler: nothing more to report
        return
    # One last result with the trial's final metrics (peak GPU memory, step time, test mIoU) for Ray's records.
    tune.report({**{k: v for k, v in final.items() if not k.startswith("test/iou/")}, **where, "final": 1})


def _run_ray(suite: Suite, todo, uri, experiment, say: Say, scheduler: Any = None,
             address: str | None = None) -> dict[str, Any]:
    try:
        import ray
        from ray import tune
    except ImportError as err:
        raise PeftbenchError("Ray Tune is not installed: install ray[tune]==2.60.0 or pass --sequential") from err
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    res = suite.resources
    gpus = None
    if res.gpus_per_trial > 0 and address is None:  # count them here (respects CUDA_VISIBLE_DEVICES) instead of relying on NVML
        import torch

        gpus = torch.cuda.device_count()
        if gpus < res.gpus_per_trial:
            raise PeftbenchError(f"the suite asks for {res.gpus_per_trial} GPU(s) per trial but {gpus} are visible "
                                 f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                                 "set resources.gpus_per_trial: 0 for CPU runs")
    say(ray_cluster.connect(address, gpus, say))
    if address is not None:  # code ships with the job; methods folders inside it are found in the copy
        todo = [{**s, "methods_dir": [ray_cluster.shipped_path(p) for p in s["methods_dir"]]} for s in todo]
    try:
        if address is not None and res.gpus_per_trial > 0:
            ray_cluster.check_gpus(res.gpus_per_trial)
        if gpus is not None:
            say(f"Ray resources: {ray.cluster_resources().get('CPU', 0):g} CPUs, {gpus} GPUs; per trial "
                f"{res.cpus_per_trial:g} CPUs, {res.gpus_per_trial:g} GPU")
        callback = _progress_callback(len(todo), say)
        trainable = tune.with_resources(_ray_trainable, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
        storage = str(Path(".cache/peftbench/ray").resolve())
        tuner_name = f"{suite.name}-{int(time.time())}"
        tuner = tune.Tuner(
            trainable,
            param_space={"spec": tune.grid_search(todo), "uri": uri, "experiment": experiment,
                         "cwd": os.getcwd() if address is None else None,
                         "gpus": res.gpus_per_trial},
            # reuse_actors: a finished trial's worker (torch, MLflow imported) takes the next trial,
            # saving ~6 s of process start per trial; every trial re-seeds and rebuilds its state.
            tune_config=tune.TuneConfig(max_concurrent_trials=res.max_concurrent, reuse_actors=True, scheduler=scheduler,
                                        trial_name_creator=lambda t: t.config["spec"]["run_name"].replace("/", "_"),
                                        trial_dirname_creator=lambda t: t.trial_id),
            run_config=tune.RunConfig(name=tuner_name, storage_path=storage, verbose=0,
                                      callbacks=[callback], failure_config=tune.FailureConfig(max_failures=0)),
        )
        results = tuner.fit()
        failed = [(r.config["spec"]["run_name"], str(r.error).strip().splitlines()[-1]) for r in results if r.error]
        placement = callback.placement
        folder = Path(storage) / tuner_name
        _write_placement(folder, placement, say)
    finally:
        ray.shutdown()
    return {"ran": len(todo), "failed": failed, "placement": placement, "ray_dir": str(folder)}


def _write_placement(folder: Path, placement: dict[str, Any], say: Say) -> None:
    """``placement.json`` in the Ray experiment folder, and one line per trial: where and how long it ran."""
    import json

    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "placement.json").write_text(json.dumps(placement, indent=1, default=str))
    except OSError as err:
        say(f"could not write {folder / 'placement.json'}: {err}")
    say(f"Ray experiment folder: {folder}")
    for name, p in sorted(placement.items(), key=lambda kv: kv[1].get("start_s") or 0):
        peak = p.get("eff/peak_mem_mb")
        say(f"  placement {name}: gpu {p.get('placement/gpu_ids') or '-'} "
            f"(CUDA_VISIBLE_DEVICES={p.get('placement/cuda_visible_devices', '?')}), "
            f"{p.get('start_s') or 0:.0f}-{p.get('end_s') or 0:.0f} s, "
            f"peak {f'{peak:.0f} MB' if isinstance(peak, (int, float)) else '?'}, {p['status']}")


def _progress_callback(total: int, say: Say):
    """A Ray Tune callback printing one line per trial event, a running count, and placements."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self) -> None:
            self.done, self.start = 0, time.perf_counter()
            self.placement: dict[str, Any] = {}
            self.started: dict[str, tuple[float, float]] = {}  # trial id -> (s since Tune began, epoch s)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.trial_id] = (time.perf_counter() - self.start, time.time())
            say(f"  started  {_name(trial)}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("final"):
                say(f"  final {_name(trial)}: test mIoU {result.get('test/mIoU', float('nan')):.3f}, "
                    f"peak {result.get('eff/peak_mem_mb', float('nan')):.0f} MB, "
                    f"step {result.get('eff/step_time_ms', float('nan')):.0f} ms, "
                    f"gpu {result.get('placement/gpu_ids') or '-'}")
                return
            val = result.get("val/mIoU")
            shown = f", val mIoU {val:.3f}" if val is not None else ""
            say(f"  epoch {result.get('epoch', '?')} {_name(trial)}: loss {result.get('train/loss', 0):.3f}{shown}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finish(trial, "FAILED")

        def _finish(self, trial, status: str) -> None:
            self.done += 1
            last = trial.last_result or {}
            self.placement[_name(trial)] = {
                "trial_id": trial.trial_id, "status": status,
                "resources": trial.placement_group_factory.required_resources,
                "start_s": self.started.get(trial.trial_id, (None,))[0], "end_s": time.perf_counter() - self.start,
                "start_epoch": self.started.get(trial.trial_id, (None, None))[1], "end_epoch": time.time(),
                **{k: v for k, v in last.items()
                   if k.startswith("placement/") or k in _FINAL_KEYS}}
            say(f"[{self.done}/{total}] {status} {_name(trial)} ({time.perf_counter() - self.start:.0f} s elapsed)")

    return Progress()


_FINAL_KEYS = ("eff/peak_mem_mb", "eff/step_time_ms", "eff/points_per_s", "time/train_s", "test/mIoU")


def _name(trial) -> str:
    return trial.config["spec"]["run_name"]
