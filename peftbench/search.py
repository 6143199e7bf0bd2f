"""Search, then final seeds: the paper reports each method at its best validated setting.

1. Search trials: every point of a method's ``search`` grid × its search seeds, run on Ray Tune with
   ASHA (one ASHA per method × dataset × split, so a weak GEM learning rate is judged against other
   GEM learning rates, not against the linear probe). Stopped trials end FINISHED with the tag
   ``peftbench.stopped_early``: they are a complete answer for the search and are not rerun.
2. Choice: per method × dataset × split, the point with the best mean ``metric`` (its last
   reported value) over the search seeds, read from MLflow, so a resumed suite chooses the same.
3. Final trials: the chosen setting × ``final.seeds``, on the suite's test protocol.

Runs are tagged ``peftbench.stage`` = ``search`` | ``final``; final runs carry the chosen setting
in ``peftbench.search_choice`` (JSON). Reports use final runs.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from typing import Any

from peftbench import tracking
from peftbench.errors import PeftbenchError
from peftbench.search_config import SearchSpec, method_search
from peftbench.suite import Suite, fingerprint, trial_specs

Say = Callable[[str], None]
_NOT_HASHED = ("fingerprint", "run_name", "methods_dir")


def _point_text(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


def _restamp(spec: dict[str, Any], **extra: Any) -> dict[str, Any]:
    spec = {**spec, **extra}
    spec["fingerprint"] = fingerprint({k: v for k, v in spec.items() if k not in _NOT_HASHED})
    return spec


def _entry_specs(suite: Suite, entry: Any, train: dict[str, Any], seeds: list[int]) -> list[dict[str, Any]]:
    """``trial_specs`` of one method entry with extra training settings and its own seeds."""
    entry = dataclasses.replace(entry, train={**entry.train, **train})
    return trial_specs(dataclasses.replace(suite, methods=[entry], seeds=seeds))


def searches(suite: Suite) -> dict[str, SearchSpec]:
    """Method label -> its search (methods without one are absent)."""
    out = {}
    for entry in suite.methods:
        spec = method_search(suite.search, entry.search, "search")
        if spec is not None:
            out[entry.label or entry.name] = spec
    return out


def group_of(spec: dict[str, Any]) -> str:
    """The method × dataset × split a search trial competes in."""
    return f"{spec['method']['label']}/{spec['dataset']['label']}/{spec['split']}"


def search_specs(suite: Suite) -> list[dict[str, Any]]:
    """Every search trial: grid point × search seed, per method × dataset × split; test = last validation."""
    plan = searches(suite)
    specs = []
    for entry in suite.methods:
        search = plan.get(entry.label or entry.name)
        for point in search.points() if search else []:
            for spec in _entry_specs(suite, entry, {**point, "test_protocol": "single"}, search.seeds):
                spec = _restamp(spec, stage="search", search_point=point)
                spec["run_name"] += f"/search-{_point_text(point)}"
                specs.append(spec)
    return specs


def final_specs(suite: Suite, choices: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The final trials: each method at its chosen point (``choices[group]``) × ``final.seeds``;
    a group whose search finished no trial gets none (the summary reports it)."""
    seeds = suite.final.seeds if suite.final else suite.seeds
    plan = searches(suite)
    specs = []
    for entry in suite.methods:
        label = entry.label or entry.name
        for dataset in suite.datasets:
            for split in suite.splits:
                one = dataclasses.replace(suite, datasets=[dataset], splits=[split])
                if label not in plan:
                    specs += [_restamp(s, stage="final") for s in _entry_specs(one, entry, {}, seeds)]
                elif (choice := choices.get(f"{label}/{dataset.display}/{split}")) is not None:
                    specs += [_restamp(s, stage="final", search_choice=choice["point"])
                              for s in _entry_specs(one, entry, choice["point"], seeds)]
    return specs


def choose(uri: str, experiment: str, specs: list[dict[str, Any]], plan: dict[str, SearchSpec]) -> dict[str, dict]:
    """Per group, the point with the best mean metric over its FINISHED search runs (from MLflow)."""
    by_fp = {s["fingerprint"]: s for s in specs}
    c = tracking.client(tracking.resolve_tracking_uri(uri))
    exp = c.get_experiment_by_name(experiment)
    runs = [] if exp is None else tracking.iter_runs(
        c, exp.experiment_id, "attributes.status = 'FINISHED' and tags.`peftbench.stage` = 'search'")
    scores: dict[str, dict[str, list[float]]] = {}
    points: dict[str, dict[str, Any]] = {}
    group_search: dict[str, SearchSpec] = {}
    for run in runs:
        spec = by_fp.get(run.data.tags.get("peftbench.fingerprint", ""))
        if spec is None:
            continue
        metric = plan[spec["method"]["label"]].metric
        value = run.data.metrics.get(metric)
        if value is None:
            continue
        key = json.dumps(spec["search_point"], sort_keys=True)
        group_search[group_of(spec)] = plan[spec["method"]["label"]]
        scores.setdefault(group_of(spec), {}).setdefault(key, []).append(float(value))
        points[key] = spec["search_point"]
    choices = {}
    for group, by_point in scores.items():
        search = group_search[group]
        sign = 1.0 if search.mode == "max" else -1.0
        key = max(by_point, key=lambda k: sign * statistics.mean(by_point[k]))
        choices[group] = {"point": points[key], "metric": search.metric, "value": statistics.mean(by_point[key]),
                          "tried": {k: statistics.mean(v) for k, v in by_point.items()}}
    return choices


def grouped_asha(specs: list[dict[str, Any]], plan: dict[str, SearchSpec]) -> Any:
    """A Ray Tune scheduler running one ASHA per search group (trials of other groups never compete)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    epochs = {group_of(s): int(s["train"]["epochs"]) for s in specs}

    class GroupedASHA(FIFOScheduler):
        def __init__(self) -> None:
            super().__init__()
            self.groups: dict[str, Any] = {}

        def _of(self, trial) -> Any:
            spec = trial.config["spec"]
            group = group_of(spec)
            if group not in self.groups:
                search = plan[spec["method"]["label"]]
                # stop_last_trials=False: a trial that reaches its last epoch still tests and records.
                self.groups[group] = ASHAScheduler(
                    time_attr="epoch", metric=search.metric, mode=search.mode, max_t=epochs[group],
                    grace_period=min(search.grace_period, epochs[group]),
                    reduction_factor=search.reduction_factor, stop_last_trials=False)
            return self.groups[group]

        def on_trial_add(self, controller, trial):
            self._of(trial).on_trial_add(controller, trial)

        def on_trial_result(self, controller, trial, result):
            return self._of(trial).on_trial_result(controller, trial, result)

        def on_trial_complete(self, controller, trial, result):
            self._of(trial).on_trial_complete(controller, trial, result)

        def on_trial_remove(self, controller, trial):
            self._of(trial).on_trial_remove(controller, trial)

        def on_trial_error(self, controller, trial):
            self._of(trial).on_trial_remove(controller, trial)

    return GroupedASHA()


def run_search_then_final(suite: Suite, uri: str, say: Say, sequential: bool = False, rerun: bool = False,
                          run_suite: Callable[..., dict[str, Any]] | None = None) -> dict[str, Any]:
    """Search trials (resumable), the choice per method, then the final trials. Returns a merged summary."""
    if run_suite is None:
        from peftbench.tune import run_suite
    plan = searches(suite)
    searched = search_specs(suite)
    say(f"search: {len(searched)} trials over {len(plan)} method(s)")
    use_asha = any(s.scheduler == "asha" for s in plan.values()) and not sequential
    first = run_suite(suite, searched, uri, say, sequential=sequential, rerun=rerun,
                      scheduler=grouped_asha(searched, plan) if use_asha else None)
    choices = choose(uri, suite.experiment_name, searched, plan)
    for group in sorted({group_of(s) for s in searched}):
        choice = choices.get(group)
        shown = (f"{_point_text(choice['point'])} ({choice['metric']} {choice['value']:.4f})" if choice
                 else "no finished search trial: no final runs")
        say(f"chosen {group}: {shown}")
    finals = final_specs(suite, choices)
    if not finals:
        raise PeftbenchError("no method has a finished search trial to choose from; see the failed runs above")
    say(f"final: {len(finals)} trials")
    second = run_suite(suite, finals, uri, say, sequential=sequential, rerun=rerun)
    missing = [(g, "search finished no trial") for g in {group_of(s) for s in searched} if g not in choices]
    return {"ran": first["ran"] + second["ran"], "failed": first["failed"] + second["failed"] + missing,
            "choices": choices}
