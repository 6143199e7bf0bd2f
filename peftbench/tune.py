"""Ray Tune orchestration: one trial per spec, resources from the suite, resume from MLflow."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftbench import tracking
from peftbench.data.sources import prepare_dataset
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
    return tags


def tracked_trial(spec: dict[str, Any], uri: str, experiment: str, report=None, progress: Say | None = None) -> dict:
    """Run one trial inside its MLflow run (FINISHED, or FAILED with the error)."""
    params = tracking.flatten_config({k: v for k, v in spec.items() if k not in ("fingerprint", "run_name")})
    with tracking.TrialRun(uri, experiment, spec["run_name"], trial_tags(spec), params) as run:
        return run_trial(spec, run, report, progress)


def _absolute(spec: dict[str, Any]) -> dict[str, Any]:
    """Trials may run in another working directory: make every path absolute (fingerprint unchanged)."""
    spec = {**spec, "dataset": dict(spec["dataset"]), "backbone": dict(spec["backbone"])}
    spec["dataset"]["root"] = str(Path(spec["dataset"]["root"]).resolve())
    if spec["backbone"].get("checkpoint"):
        spec["backbone"]["checkpoint"] = str(Path(spec["backbone"]["checkpoint"]).resolve())
    return spec


def run_suite(suite: Suite, specs: list[dict[str, Any]], uri: str, say: Say, sequential: bool = False,
              rerun: bool = False) -> dict[str, Any]:
    """Pretrain if needed, then run every spec not yet FINISHED in MLflow. Returns a summary."""
    experiment = suite.experiment_name
    tracking.ensure_experiment(uri, experiment)
    for dataset in {s["dataset"]["root"]: s["dataset"] for s in specs}.values():
        prepare_dataset(dataset)  # in the driver: trials never race to generate the same data
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
    return _run_ray(suite, todo, uri, experiment, say)


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


def _ray_trainable(config: dict[str, Any]) -> None:
    from ray import tune

    os.chdir(config["cwd"])
    tracked_trial(config["spec"], config["uri"], config["experiment"], report=tune.report)


def _run_ray(suite: Suite, todo, uri, experiment, say: Say) -> dict[str, Any]:
    try:
        import ray
        from ray import tune
    except ImportError as err:
        raise PeftbenchError("Ray Tune is not installed: install ray[tune]==2.60.0 or pass --sequential") from err
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    res = suite.resources
    ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=True, logging_level="ERROR")
    try:
        callback = _progress_callback(len(todo), say)
        trainable = tune.with_resources(_ray_trainable, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
        storage = str(Path(".cache/peftbench/ray").resolve())
        tuner = tune.Tuner(
            trainable,
            param_space={"spec": tune.grid_search(todo), "uri": uri, "experiment": experiment, "cwd": os.getcwd()},
            tune_config=tune.TuneConfig(max_concurrent_trials=res.max_concurrent,
                                        trial_name_creator=lambda t: t.config["spec"]["run_name"].replace("/", "_"),
                                        trial_dirname_creator=lambda t: t.trial_id),
            run_config=tune.RunConfig(name=f"{suite.name}-{int(time.time())}", storage_path=storage, verbose=0,
                                      callbacks=[callback], failure_config=tune.FailureConfig(max_failures=0)),
        )
        results = tuner.fit()
        failed = [(r.config["spec"]["run_name"], str(r.error).strip().splitlines()[-1]) for r in results if r.error]
        placement = callback.placement
    finally:
        ray.shutdown()
    return {"ran": len(todo), "failed": failed, "placement": placement}


def _progress_callback(total: int, say: Say):
    """A Ray Tune callback printing one line per trial event, a running count, and placements."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self) -> None:
            self.done, self.start = 0, time.perf_counter()
            self.placement: dict[str, Any] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            say(f"  started  {_name(trial)}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            val = result.get("val/mIoU")
            shown = f", val mIoU {val:.3f}" if val is not None else ""
            say(f"  epoch {result.get('epoch', '?')} {_name(trial)}: loss {result.get('train/loss', 0):.3f}{shown}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trial, "done")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._finish(trial, "FAILED")

        def _finish(self, trial, status: str) -> None:
            self.done += 1
            self.placement[_name(trial)] = {"trial_id": trial.trial_id, "status": status,
                                            "resources": trial.placement_group_factory.required_resources}
            say(f"[{self.done}/{total}] {status} {_name(trial)} ({time.perf_counter() - self.start:.0f} s elapsed)")

    return Progress()


def _name(trial) -> str:
    return trial.config["spec"]["run_name"]
