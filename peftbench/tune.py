"""Ray Tune orchestration: one trial per spec, resources from the suite, resume from MLflow and from
trial checkpoints, retries for crashes (``peftbench.tune_trial`` is what runs inside a trial)."""

from __future__ import annotations

import gc
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftbench import ray_cluster, run_state, tracking
from peftbench.data.sources import expand_path, prepare_dataset, resolve_file
from peftbench.errors import PeftbenchError
from peftbench.hub import hub_reference
from peftbench.interrupt import interrupt_on_sigterm, raised_by_interrupt, sigterm_interrupts
from peftbench.owner import this_process
from peftbench.preflight import check_resources
from peftbench.progress import as_console
from peftbench.store_lock import experiment_lock, store_lock
from peftbench.suite import Suite, pretrain_spec
from peftbench.train.trial import ensure_pretrained
from peftbench.tune_trial import ray_trainable, tracked_trial, trial_tags

Say = Callable[[str], None]


def _absolute(spec: dict[str, Any]) -> dict[str, Any]:
    """Trials may run in another working directory: make every path absolute (fingerprint unchanged)."""
    spec = {**spec, "dataset": dict(spec["dataset"]), "backbone": dict(spec["backbone"])}
    spec["dataset"]["root"] = str(Path(spec["dataset"]["root"]).resolve())
    checkpoint = spec["backbone"].get("checkpoint")
    if checkpoint and hub_reference(str(expand_path(checkpoint, "backbone.checkpoint"))) is None:  # hub names stay
        spec["backbone"]["checkpoint"] = str(Path(checkpoint).resolve())
    return spec


def run_suite(suite: Suite, specs: list[dict[str, Any]], uri: str, say: Say, sequential: bool = False,
              rerun: bool = False, scheduler: Any = None, address: str | None = None) -> dict[str, Any]:
    """Pretrain if needed, then run every spec not yet FINISHED in MLflow. Returns a summary.
    ``scheduler``: a Ray Tune trial scheduler (the search's ASHA); ignored when sequential.
    ``address``: an existing Ray cluster to run on (``peftbench.ray_cluster``); None: a private Ray here.

    Holds the experiment's lock throughout: a second run of the same experiment waits, then skips
    what this one finished. A Ctrl-C or SIGTERM ends it with the interrupted runs KILLED ("interrupted" in
    the summary) instead of raising.
    """
    experiment = suite.experiment_name
    driver = this_process().token
    with sigterm_interrupts(), experiment_lock(uri, experiment, say):
        for dataset in {s["dataset"]["root"]: s["dataset"] for s in specs}.values():
            prepare_dataset(dataset, as_console(say).task("  "))  # in the driver, locked: no race on the data
        with store_lock(uri):  # two runs on a fresh store must not both create (migrate) it
            tracking.ensure_experiment(uri, experiment)
        closed = run_state.close_orphans(uri, experiment)
        if closed:
            say(f"marked {len(closed)} RUNNING run(s) whose process is gone KILLED; they run again: "
                + ", ".join(closed[:5]) + (" ..." if len(closed) > 5 else ""))
        todo: list[dict[str, Any]] = []
        try:
            summary = _run_todo(suite, specs, uri, say, sequential, rerun, driver, todo, scheduler, address)
        except (KeyboardInterrupt, Exception) as err:
            if not raised_by_interrupt(err):  # an MLflow error raised by a Ctrl-C is the Ctrl-C
                raise
            summary = {"ran": 0, "failed": [], "interrupted": True}
        if summary.get("interrupted"):
            summary["counts"] = _close_interrupted(uri, experiment, driver, todo, say)
        superseded = run_state.remove_duplicate_finished(uri, experiment)  # --rerun, or an older store
        if superseded:
            say(f"one FINISHED run per trial: {len(superseded)} older FINISHED run(s) of the same trials deleted "
                "in MLflow (restore one with `mlflow runs restore --run-id ID`)")
    return summary


def _close_interrupted(uri: str, experiment: str, driver: str, todo: list[dict[str, Any]],
                       say: Say) -> dict[str, int]:
    """Mark this session's unfinished runs KILLED; the trials' statuses as counts.

    An interrupt inside an MLflow call can leave that call's sqlite connection unreturned, holding
    the database's lock, in a reference cycle: collected first (measured in one process: the lock
    stayed after 2 of 25 interrupts without, after none of 150 with). If the store still cannot be
    written, the next run marks them: their owner, this process, is gone by then."""
    gc.collect()
    try:
        run_state.close_session(uri, experiment, driver, "interrupted (Ctrl-C or SIGTERM) while running")
        status = run_state.session_statuses(uri, experiment, driver)
    except Exception as err:  # noqa: BLE001 - the interrupt is what the user must see
        say(f"note: could not mark the interrupted runs KILLED now ({type(err).__name__}); "
            "the next `peftbench run` of this suite does")
        return {}
    if not todo:  # interrupted before the trials to run were known: no counts to give
        return {}
    counts = Counter(status.get(s["fingerprint"], "not started") for s in todo)
    return {"finished": counts["FINISHED"], "failed": counts["FAILED"], "killed": counts["KILLED"],
            "not started": counts["not started"]}


def _run_todo(suite: Suite, specs: list[dict[str, Any]], uri: str, say: Say, sequential: bool, rerun: bool,
              driver: str, todo: list[dict[str, Any]], scheduler: Any = None,
              address: str | None = None) -> dict[str, Any]:
    experiment = suite.experiment_name
    if suite.backbone.checkpoint not in (None, "pretrain"):
        resolve_file(suite.backbone.checkpoint, "backbone.checkpoint")  # missing: one line, before any trial
    pre = pretrain_spec(suite)
    if pre is not None and suite.backbone.checkpoint == "pretrain":
        prepare_dataset(pre["dataset"], as_console(say).task("  "))
        pre = {**pre, "run_name": f"pretrain/{pre['dataset']['domain'] or pre['dataset']['name']}"}
        say(f"pretraining stage ({pre['backbone']['config']} on {pre['dataset']['root']}) ...")
        start = time.perf_counter()
        tags = {**trial_tags(pre), tracking.DRIVER_TAG: driver}
        ensure_pretrained(pre, lambda: tracking.TrialRun(uri, experiment, pre["run_name"], tags,
                                                         tracking.flatten_config(pre)), as_console(say).task("  "))
        say(f"pretraining stage ready ({time.perf_counter() - start:.0f} s)")
    done = set() if rerun else tracking.finished_fingerprints(uri, experiment)
    todo += [_absolute(s) for s in specs if s["fingerprint"] not in done]
    if len(todo) < len(specs):
        say(f"resume: {len(specs) - len(todo)} of {len(specs)} trials already FINISHED in MLflow, skipped")
    if not todo:
        return {"ran": 0, "failed": []}
    if sequential:
        return _run_sequential(todo, uri, experiment, say, driver)
    # Unfinished runs with a checkpoint (a driver killed, a trial Ray gave up on) continue from it.
    fingerprints = {s["fingerprint"] for s in todo}
    resume = {} if rerun else {fp: path for fp, path in run_state.checkpoints_to_resume(uri, experiment).items()
                               if fp in fingerprints}
    if resume:
        say(f"resume: {len(resume)} unfinished trial(s) continue from their last checkpoint in their MLflow run")
    return _run_ray(suite, todo, uri, experiment, say, driver, scheduler, address, resume)


def _run_sequential(todo, uri, experiment, say: Say, driver: str) -> dict[str, Any]:
    failed = []
    console = as_console(say)
    suite_bar = console.suite(len(todo))
    for spec in todo:
        suite_bar.started(spec["run_name"])
        steps = console.task("    ")  # epoch/step bar with loss and ETA; epoch lines above it
        try:
            final = tracked_trial(spec, uri, experiment, progress=steps, extra_tags={tracking.DRIVER_TAG: driver})
            suite_bar.finished_trial(spec["run_name"], final["test/mIoU"])
        except Exception as err:  # noqa: BLE001 - a failed trial is recorded; the suite goes on
            if raised_by_interrupt(err):  # not a failed trial: run_suite ends the suite as interrupted
                raise
            message = str(err) if isinstance(err, PeftbenchError) else f"{type(err).__name__}: {err}"
            failed.append((spec["run_name"], message))
            suite_bar.finished_trial(spec["run_name"], error=message)
        finally:
            steps.close()
    suite_bar.close()
    return {"ran": len(todo), "failed": failed}


def _run_ray(suite: Suite, todo, uri, experiment, say: Say, driver: str, scheduler: Any = None,
             address: str | None = None, resume: dict[str, str] | None = None) -> dict[str, Any]:
    try:
        from peftbench.ray_local import local_ray
    except ImportError as err:
        raise PeftbenchError("Ray Tune is not installed: install ray[tune]==2.60.0 or pass --sequential") from err
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C raises here; the run then marks its trials KILLED
    if address is not None:
        with ray_cluster.joined(address, suite.resources.gpus_per_trial, say) as storage:
            interrupt_on_sigterm()  # after ray.init, which installs Ray's aborting handler
            # The code ships with the job; methods folders inside it are found in the workers' copy.
            todo = [{**s, "methods_dir": [ray_cluster.shipped_path(p) for p in s["methods_dir"]]} for s in todo]
            return _run_tuner(suite, todo, uri, experiment, say, driver, storage, None, scheduler, cwd=None,
                              resume=resume)
    gpus = check_resources(suite.resources.cpus_per_trial, suite.resources.gpus_per_trial)
    with local_ray(gpus) as storage:
        interrupt_on_sigterm()  # after ray.init, which installs Ray's aborting handler
        return _run_tuner(suite, todo, uri, experiment, say, driver, storage, gpus, scheduler, resume=resume)


def _run_tuner(suite: Suite, todo, uri, experiment, say: Say, driver: str, storage: Path,
               gpus: int | None, scheduler: Any = None, cwd: str | None = "",
               resume: dict[str, str] | None = None) -> dict[str, Any]:
    """One Tune experiment over ``todo`` on the Ray cluster this process is connected to.

    ``cwd``: the trials' working directory ("" = this one; None = Ray's copy of the code, on a cluster).
    ``resume``: fingerprint -> checkpoint folder to continue from. A trial that crashes is retried
    ``resources.max_failures`` times from its last checkpoint; a user error ends it at once (an
    ``error`` result, see ``tune_trial.ray_trainable``).
    """
    import ray
    from ray import tune

    res = suite.resources
    if gpus is not None:
        say(f"Ray resources: {ray.cluster_resources().get('CPU', 0):g} CPUs, {gpus} GPUs; per trial "
            f"{res.cpus_per_trial:g} CPUs, {res.gpus_per_trial:g} GPU")
    callback = _progress_callback(len(todo), say)
    trainable = tune.with_resources(ray_trainable, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    tuner_name = f"{suite.name}-{int(time.time())}"
    tuner = tune.Tuner(
        trainable,
        param_space={"spec": tune.grid_search(todo), "uri": uri, "experiment": experiment,
                     "cwd": os.getcwd() if cwd == "" else cwd, "driver": driver, "gpus": res.gpus_per_trial,
                     "ray_dir": str(storage / tuner_name), "checkpoint_every": res.checkpoint_every,
                     "resume": resume or {}},
        # reuse_actors: a finished trial's worker (torch, MLflow imported) takes the next trial,
        # saving ~6 s of process start per trial; every trial re-seeds and rebuilds its state.
        tune_config=tune.TuneConfig(max_concurrent_trials=res.max_concurrent, reuse_actors=True, scheduler=scheduler,
                                    trial_name_creator=lambda t: t.config["spec"]["run_name"].replace("/", "_"),
                                    trial_dirname_creator=lambda t: t.trial_id),
        run_config=tune.RunConfig(name=tuner_name, storage_path=str(storage), verbose=0,
                                  callbacks=[callback],
                                  failure_config=tune.FailureConfig(max_failures=res.max_failures),
                                  # the newest two: a kill while Ray writes one leaves the one before
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    results = tuner.fit()
    failed = [(r.config["spec"]["run_name"], _last_line(r.error) if r.error else r.metrics["error"])
              for r in results if r.error or (r.metrics or {}).get("error")]
    # A trial whose process died (and Ray gave up on) left its run RUNNING: not a live run any more.
    run_state.close_session(uri, experiment, driver, "its trial process died; Ray gave up on it (see the Ray "
                            "experiment folder); rerun to continue from its last checkpoint", status="FAILED")
    folder = storage / tuner_name
    _write_placement(folder, callback.placement, say)
    return {"ran": len(todo), "failed": failed, "placement": callback.placement, "ray_dir": str(folder)}


def _last_line(error: BaseException) -> str:
    """The cause of a trial error without Ray's traceback (nor the module path of a peftbench error)."""
    line = str(error).strip().splitlines()[-1]
    name, _, rest = line.partition(": ")
    return rest if rest and name.startswith("peftbench.") and " " not in name else line


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
    """A Ray Tune callback driving the suite bar (one line per finished trial) and recording placements."""
    from ray import tune

    # Ray pickles callbacks (and this class, by value) into tuner.pkl: no closure over the console,
    # whose stream (a pytest capture, a TTY) cannot be pickled; it stays out of the pickled state.
    class Progress(tune.Callback):
        def __init__(self, total: int, say: Say) -> None:
            self.done, self.start, self.total = 0, time.perf_counter(), total
            self.placement: dict[str, Any] = {}
            self.started: dict[str, tuple[float, float]] = {}  # trial id -> (s since Tune began, epoch s)
            self.console = as_console(say)
            self.bar = self.console.suite(total)

        def __getstate__(self) -> dict[str, Any]:
            return {k: v for k, v in self.__dict__.items() if k not in ("bar", "console")}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state, console=as_console(print))
            self.bar = self.console.suite(self.total)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.trial_id] = (time.perf_counter() - self.start, time.time())
            self.bar.started(_name(trial))

        def on_step_end(self, iteration, trials, **info):
            self.bar.tick()  # elapsed and ETA move between trial events

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("error"):
                return  # the trial ends on it: shown by on_trial_complete
            if result.get("final"):
                self.console.detail(
                    f"  final {_name(trial)}: test mIoU {result.get('test/mIoU', float('nan')):.3f}, "
                    f"peak {result.get('eff/peak_mem_mb', float('nan')):.0f} MB, "
                    f"step {result.get('eff/step_time_ms', float('nan')):.0f} ms, "
                    f"gpu {result.get('placement/gpu_ids') or '-'}")
                return
            self.bar.epoch(_name(trial), result.get("epoch", "?"), result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._finish(trial, "FAILED" if (trial.last_result or {}).get("error") else "done")

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
            error = None if status == "done" else last.get("error") or _last_error_line(trial)
            self.bar.finished_trial(_name(trial), last.get("test/mIoU"), error=error)
            if self.done == self.total:
                self.bar.close()


    return Progress(total, say)


_FINAL_KEYS = ("eff/peak_mem_mb", "eff/step_time_ms", "eff/points_per_s", "time/train_s", "test/mIoU")


def _last_error_line(trial) -> str:
    try:
        lines = str(trial.get_error() or "").strip().splitlines()
    except Exception:  # noqa: BLE001 - the line is a courtesy; the summary lists failures anyway
        lines = []
    return lines[-1] if lines else "see the Ray experiment folder"


def _name(trial) -> str:
    return trial.config["spec"]["run_name"]
