#!/usr/bin/env python
"""Where a real trial's step time goes: one ``peftbench train`` trial, instrumented from outside.

Reports the wall time between consecutive step ends (data wait included) next to the trainer's
own step time (from batch in hand to synchronised end), and a torch-profiler breakdown (device
and host ms per stage, as ``peftbench bench --profile``, and the ops with most device time) of one
whole step of the trial, loss, clipping and loader wait included. Nothing in the trainer is
changed: its end-of-step synchronisation is wrapped to mark the step boundaries (and, on CUDA,
read the caching allocator's retries so far: a stalled step's suspect).

    python scripts/trial_probe.py suites/gpu_smoke.yaml --method gem --seed 0 --profile-step 20 --json probe.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import peftbench.train.trainer as trainer_module  # noqa: E402
from peftbench.bench_stages import PREFIX, stage_ranges, summarize  # noqa: E402
from peftbench.suite import load_suite, trial_specs  # noqa: E402
from peftbench.train.recorder import LocalRecorder  # noqa: E402
from peftbench.train.trial import run_trial  # noqa: E402


def _labelled(fn, stage: str):
    def wrapped(*args, **kwargs):
        with torch.autograd.profiler.record_function(PREFIX + stage):
            return fn(*args, **kwargs)
    return wrapped


def _start_smi() -> tuple[subprocess.Popen, Path]:
    path = Path(tempfile.mkdtemp()) / "smi.csv"
    cmd = ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]
    with path.open("w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL), path


def _smi_busy(smi: tuple[subprocess.Popen, Path], window: list[float]) -> dict:
    """Mean nvidia-smi utilisation over the step-end ``window`` (unix times) and over all samples."""
    process, path = smi
    process.terminate()
    process.wait()
    samples = []
    for line in path.read_text().splitlines():
        stamp, _, busy = line.partition(", ")
        with contextlib.suppress(ValueError):
            samples.append((datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp(), float(busy)))
    inside = [b for t, b in samples if window and window[0] <= t <= window[-1]]
    return {"train_pct": float(np.mean(inside)) if inside else None, "train_samples": len(inside),
            "process_pct": float(np.mean([b for _, b in samples])) if samples else None,
            "process_samples": len(samples)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite")
    parser.add_argument("--method")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--profile-step", type=int, default=20, help="profile the step after this many")
    parser.add_argument("--smi", action="store_true", help="GPU busy %% from nvidia-smi, training steps only")
    parser.add_argument("--json")
    args = parser.parse_args()
    smi = _start_smi() if args.smi else None
    spec = next(s for s in trial_specs(load_suite(args.suite))
                if args.method in (None, s["method"]["label"]) and args.seed in (None, s["seed"]))
    ends: list[float] = []
    alloc_retries: list[int] = []  # the caching allocator's cumulative retries at each step end (a stall's suspect)
    unix_offset = time.time() - time.perf_counter()  # step ends as unix times, for nvidia-smi's stamps
    state: dict = {}
    original_sync = trainer_module.Trainer._synchronize

    def synchronize(self) -> None:  # the end of every training step (and of latency passes)
        original_sync(self)
        ends.append(time.perf_counter())
        if self.device.type == "cuda":
            alloc_retries.append(torch.cuda.memory_stats().get("num_alloc_retries", 0))
        state["trainer"] = self
        if len(ends) == args.profile_step:
            stack = contextlib.ExitStack()
            stack.enter_context(stage_ranges(self.model))
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            state["prof"] = stack.enter_context(torch.profiler.profile(activities=activities))
            state["stack"] = stack
        elif len(ends) == args.profile_step + 1 and "stack" in state:
            state.pop("stack").close()
            device_stages, host_stages = summarize(state["prof"].events(), self.device.type == "cuda")
            by_device = sorted(state["prof"].key_averages(), key=lambda e: -e.self_device_time_total)[:25]
            state["profile"] = {"wall_ms": 1000 * (ends[-1] - ends[-2]), "device": device_stages,
                                "host": host_stages,
                                "top_ops": [(e.key[:80], round(e.self_device_time_total / 1000, 2),
                                             round(e.self_cpu_time_total / 1000, 2), e.count) for e in by_device]}

    trainer_module.Trainer._synchronize = synchronize
    trainer_module.segmentation_loss = _labelled(trainer_module.segmentation_loss, "loss")
    torch.nn.utils.clip_grad_norm_ = _labelled(torch.nn.utils.clip_grad_norm_, "clip")
    with tempfile.TemporaryDirectory() as tmp, LocalRecorder(Path(tmp) / "trial") as recorder:
        final = run_trial(spec, recorder, progress=print)
    trainer = state["trainer"]
    steps = len(trainer.step_times)
    gaps = np.diff(ends[:steps]) * 1000
    out = {"suite": args.suite, "method": spec["method"]["label"], "steps": steps,
           "trainer_step_ms_median": 1000 * float(np.median(trainer.step_times[3:])),
           "end_to_end_step_ms_median": float(np.median(gaps[3:])) if len(gaps) > 3 else None,
           "trainer_step_ms": [1000 * t for t in trainer.step_times], "end_to_end_step_ms": gaps.tolist(),
           "step_end_unix": [unix_offset + t for t in ends[:steps]], "alloc_retries": alloc_retries[:steps],
           "gpu_busy": _smi_busy(smi, [unix_offset + t for t in ends[3:steps]]) if smi else None,
           "profile": state.get("profile"), "final": {k: v for k, v in final.items() if k.startswith(("eff/", "time/"))}}
    print(json.dumps({k: v for k, v in out.items() if not k.endswith("_ms")}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
