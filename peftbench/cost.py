"""GPU-hours: what a suite will cost before it runs (``run --dry-run``) and what its runs spent (reports).

Spent: a run's ``time/train_s`` × the GPUs it held (metric ``cost/gpus``: the suite's
``gpus_per_trial`` under Ray, fractions included, since that is what the trial reserved).

Expected: optimizer steps × step time × GPUs per trial, a step being ``train.accumulate`` passes of
``batch_size / accumulate / data_parallel`` scenes per process. Pass times come, in this order, from FINISHED
runs in MLflow on the same hardware (metric ``eff/step_time_ms``, tag ``peftbench.hardware``:
``peftbench.hardware.hardware_name``), or from ``peftbench bench --out`` JSON records of it; the
estimate names its source, and says "unknown" when neither has the method. Only training steps
are counted (validation and the final test add to it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peftbench.errors import PeftbenchError
from peftbench.hardware import HARDWARE_TAG, is_gpu

GPUS_METRIC = "cost/gpus"


def gpu_hours(run: Mapping[str, Any]) -> float:
    """GPU-hours one run spent: ``time/train_s`` × ``cost/gpus`` / 3600 (NaN where either is missing).

    ``run`` is a row of ``peftbench.report.load_runs`` (or any mapping of metric name to value).
    """
    train_s, gpus = run.get("time/train_s"), run.get(GPUS_METRIC)
    if not _number(train_s) or not _number(gpus):
        return float("nan")
    return float(train_s) * float(gpus) / 3600.0


def gpu_hours_by_method(runs: Any) -> Any:
    """GPU-hours per method and in total (a last row ``total``) from a ``load_runs`` frame: columns
    ``method``, ``runs``, ``gpu_hours`` (runs without the metrics count as 0 and are listed in ``unknown``)."""
    import pandas as pd

    hours = runs.apply(lambda r: gpu_hours(r.to_dict()), axis=1) if len(runs) else pd.Series(dtype=float)
    frame = pd.DataFrame({"method": runs["method"] if len(runs) else [], "gpu_hours": hours})
    table = frame.groupby("method", sort=False).agg(runs=("gpu_hours", "size"),
                                                   unknown=("gpu_hours", lambda h: int(h.isna().sum())),
                                                   gpu_hours=("gpu_hours", lambda h: float(h.fillna(0).sum())))
    table = table.reset_index()
    total = {"method": "total", "runs": int(table["runs"].sum()), "unknown": int(table["unknown"].sum()),
             "gpu_hours": float(table["gpu_hours"].sum())}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- expected cost ---------------------------------------------------------------------------


@dataclasses.dataclass
class StepTimes:
    """Median times (ms) of one forward-backward pass, keyed by (method, backbone config, scenes per pass
    per process), and where from. An optimizer step is ``accumulate`` such passes."""

    source: str
    times: dict[tuple[str, str, int], float]


def _key(method: str, backbone: str, batch: int) -> tuple[str, str, int]:
    return (str(method), str(backbone), int(batch))


def step_times_from_mlflow(uri: str, device: str) -> StepTimes:
    """From FINISHED trial runs of every experiment at ``uri`` whose hardware (``hardware_name``) is ``device``."""
    from peftbench import tracking

    uri = tracking.resolve_tracking_uri(uri)
    if (db := tracking.sqlite_path(uri)) is not None and not db.is_file():
        return StepTimes("MLflow (no database yet)", {})
    tracking.check_reachable(uri)
    c = tracking.client(uri)
    found: dict[tuple[str, str, int], list[float]] = {}
    flt = (f"attributes.status = 'FINISHED' and tags.`peftbench.kind` = 'trial' "
           f"and tags.`{HARDWARE_TAG}` = '{device}'")
    for exp in c.search_experiments():
        for run in tracking.iter_runs(c, exp.experiment_id, flt):
            step = run.data.metrics.get("eff/step_time_ms")
            params = run.data.params
            try:
                accumulate = int(params.get("train.accumulate", 1))
                key = _key(params["method.name"], params["backbone.config"],
                           _per_pass(int(params["train.batch_size"]), accumulate,
                                     int(params.get("train.data_parallel", 1))))
            except (KeyError, ValueError):
                continue
            if _number(step):  # eff/step_time_ms is per optimizer step
                found.setdefault(key, []).append(float(step) / accumulate)
    runs = sum(len(v) for v in found.values())
    return StepTimes(f"MLflow ({runs} finished runs on {device})",
                     {k: statistics.median(v) for k, v in found.items()})


def step_times_from_bench(paths: list[str], device: str) -> StepTimes:
    """From ``peftbench bench --out`` JSON files measured on ``device`` (others are skipped)."""
    times: dict[tuple[str, str, int], float] = {}
    used = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
            args = record["args"]
            # ``hardware`` since hardware names were unified; older records name only a GPU (None: CPU).
            measured_on = record.get("hardware") or record.get("gpu")
            rows = record["rows"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise PeftbenchError(f"--bench {path}: not a `peftbench bench --out` record ({err})") from err
        if measured_on != device and not (measured_on is None and not is_gpu(device)):
            continue
        used.append(Path(path).name)
        for row in rows:
            if _number(row.get("train_ms")):
                # rows carry their batch size since bench measures several per call
                batch_size = row.get("batch_size", args["batch_size"])
                times[_key(row["method"], args["backbone"], batch_size)] = float(row["train_ms"])
    return StepTimes(f"bench records ({', '.join(used) or 'none'} on {device})", times)


def _per_pass(batch_size: int, accumulate: int, data_parallel: int) -> int:
    return max(batch_size // accumulate // data_parallel, 1)


def train_scenes(dataset: Mapping[str, Any], split: str) -> int | None:
    """Training scenes of a trial (from the suite for synthetic data, else from the folder); None if unknown."""
    from peftbench.data.efficiency import efficiency_split, parse_split
    from peftbench.data.sources import KindDataset, dataset_kind, expand_path

    try:
        if dataset["name"] == "synthetic" and dataset.get("scenes"):
            total = int(dataset["scenes"].get("train", 0))
            kind, value = parse_split(split)
            return max(int(round(total * float(value) / 100)), 1) if kind == "scenes" else total
        root = expand_path(dataset["root"], "dataset root")
        everything = KindDataset(dataset_kind(dataset["name"]), root, dataset["train_split"])
        if parse_split(split)[0] != "scenes":  # limited annotation keeps every scene
            return len(everything)
        return int(efficiency_split(everything, root, split, int(dataset.get("data_seed") or 0)).record["num_scenes"])
    except (PeftbenchError, OSError, KeyError, ValueError):
        return None


def trial_steps(spec: Mapping[str, Any]) -> int | None:
    """Optimizer steps of a trial: epochs × (``steps_per_epoch`` or training scenes // batch)."""
    train = spec["train"]
    per_epoch = train.get("steps_per_epoch")
    if not per_epoch:
        scenes = train_scenes(spec["dataset"], spec.get("split", "full"))
        if scenes is None:
            return None
        per_epoch = max(scenes // int(train["batch_size"]), 1)
    return int(train["epochs"]) * int(per_epoch)


def expected_cost(specs: list[dict[str, Any]], gpus_per_trial: float, sources: list[StepTimes]) -> list[dict]:
    """One row per method label: trials, steps, step time and its source, and ``hours`` (GPU-hours;
    on a CPU suite, hours of one trial process each); None where unknown."""
    rows: dict[str, dict[str, Any]] = {}
    for spec in specs:
        label = spec["method"]["label"]
        row = rows.setdefault(label, {"method": label, "trials": 0, "steps": 0, "hours": 0.0,
                                      "step_ms": None, "source": None})
        row["trials"] += 1
        steps = trial_steps(spec)
        train = spec["train"]
        accumulate = int(train.get("accumulate", 1))
        key = _key(spec["method"]["name"], spec["backbone"]["config"],
                   _per_pass(int(train["batch_size"]), accumulate, int(train.get("data_parallel", 1))))
        found = next(((s.times[key], s.source) for s in sources if key in s.times), None)
        if steps is not None and row["steps"] is not None:  # steps are known without a step time
            row["steps"] += steps
        else:
            row["steps"] = None
        if steps is None or found is None or row["hours"] is None:
            row["hours"] = None
            row["source"] = row["source"] or ("unknown: no step time" if found is None else "unknown: no data")
            continue
        row["step_ms"], row["source"] = found[0] * accumulate, found[1]  # per optimizer step
        row["hours"] += steps * row["step_ms"] / 3.6e6 * (gpus_per_trial or 1)
    return list(rows.values())


def format_cost(rows: list[dict], gpus_per_trial: float, device: str) -> str:
    unit = "GPU-h" if gpus_per_trial else "h"
    what = (f"GPU-hours on {device} ({gpus_per_trial:g} GPU per trial" if gpus_per_trial
            else f"hours on {device} (a CPU suite: hours of one trial process each")
    lines = [f"expected {what}; training steps only):"]
    for r in rows:
        hours = "unknown" if r["hours"] is None else f"{r['hours']:.2f}"
        step = f"{r['step_ms']:.0f} ms/step" if r["step_ms"] is not None else "-"
        steps = "?" if r["steps"] is None else r["steps"]
        lines.append(f"  {r['method']:<12} {r['trials']:>3} trials {steps:>8} steps  {step:>14}  "
                     f"{hours:>9} {unit}  ({r['source']})")
    unknown = [r["method"] for r in rows if r["hours"] is None]
    total = sum(r["hours"] for r in rows if r["hours"] is not None)
    lines.append(f"  {'total':<12} {sum(r['trials'] for r in rows):>3} trials  "
                 + (f"{total:.2f} {unit}" if not unknown else
                    f"unknown ({total:.2f} {unit} known; no estimate for {', '.join(unknown)})"))
    return "\n".join(lines)
