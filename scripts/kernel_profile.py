"""Which kernels and ops a step is made of, and where the device sits idle (issue 12).

For each workload (``method:mode:batch`` as in ``host_profile.py``), one profiled step after warm-ups:
the kernels by total device time (with counts), the ops by own host time (with counts), the
device's idle gaps between kernels, each with the stage and host op that launched the kernel after
it (what the device was waiting for), and what runs inside the first calls of named ranges (``--anatomy``).

    python scripts/kernel_profile.py --workloads frozen:train:3 gem:train:3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftbench.bench_stages import PREFIX, stage_ranges  # noqa: E402
from peftbench.bench import FROZEN, autocast_for, bench_model, step_functions, synthetic_scenes, timed  # noqa: E402
from peftbench.backbone.sparse_conv import set_default_backend  # noqa: E402
from peftbench.data.collate import collate_points  # noqa: E402
from peftbench.train.trainer import model_inputs, to_device  # noqa: E402
from gather_levels_ab import set_integers  # noqa: E402


WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaEventSynchronize")


def trace_kernels(prof) -> tuple[list[dict], list[dict]]:
    """A finished profile's trace events, and those of them that ran on the device (kernels, copies, memsets)."""
    with tempfile.TemporaryDirectory() as folder:
        trace = Path(folder) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    return events, [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]


def kernel_tables(prof, top: int, anatomy_of: tuple[str, ...] = ()) -> dict:
    """Kernels by device time, host ops by own time, and device idle gaps by what was launched next."""
    events, kernels = trace_kernels(prof)
    # runtime launches (torch's kernels) and driver launches (Triton's cuLaunchKernelEx)
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    ranges = defaultdict(list)  # tid -> host ranges (ops, annotations) that may enclose a launch
    for e in events:
        if e.get("cat") in ("cpu_op", "user_annotation") and "dur" in e:
            ranges[e["tid"]].append(e)

    def enclosing(launch: dict) -> tuple[str, str]:
        """(innermost op, innermost stage or backward node) around a launch."""
        around = [r for r in ranges[launch["tid"]] if r["ts"] <= launch["ts"] <= r["ts"] + r["dur"]]
        around.sort(key=lambda r: r["dur"])
        op = next((r["name"] for r in around if not r["name"].startswith(PREFIX)), "?")
        node = "autograd::engine::evaluate_function"
        stage = next((r["name"][len(PREFIX):] if r["name"].startswith(PREFIX) else
                      "backward: " + r["name"].split(": ", 1)[-1] for r in around
                      if r["name"].startswith(PREFIX) or r["name"].startswith(node)), "other")
        return op[:70], stage[:60]

    by_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for k in kernels:
        b = by_kernel[k["name"][:110]]
        b[0] += k["dur"] / 1000
        b[1] += 1
    ops: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in prof.key_averages():
        if e.self_cpu_time_total > 0:
            ops[e.key[:80]] = [e.self_cpu_time_total / 1000, e.count]
    kernels.sort(key=lambda k: k["ts"])
    gaps, end = [], None
    for k in kernels:
        if end is not None and k["ts"] - end > 0:
            gaps.append(((k["ts"] - end) / 1000, k))
        end = k["ts"] + k["dur"] if end is None else max(end, k["ts"] + k["dur"])
    by_stage: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    longest = []
    for ms, k in sorted(gaps, key=lambda g: -g[0]):
        launch = launches.get(k["args"].get("correlation"))
        op, stage = enclosing(launch) if launch is not None and ms > 0.02 else ("(short gaps)", "(short gaps)")
        b = by_stage[stage]
        b[0] += ms
        b[1] += 1
        if len(longest) < top:
            longest.append([round(ms, 3), stage, op])

    def table(d: dict) -> list:
        return sorted(([n, round(v[0], 3), v[1]] for n, v in d.items()), key=lambda r: -r[1])[:top]

    anatomy = []  # a few calls of each named range: what runs inside it, when (us from its start)
    for name in anatomy_of:
        calls = [e for e in events if e.get("name") == name and "dur" in e][:4]
        for call in calls:
            inside = sorted((e for e in events if e.get("tid") == call["tid"] and e is not call and "dur" in e
                             and call["ts"] <= e["ts"] <= call["ts"] + call["dur"]), key=lambda e: e["ts"])
            anatomy.append({"range": name, "us": round(call["dur"], 1),
                            "inside": [[e["name"][:60], round(e["ts"] - call["ts"], 1), round(e["dur"], 1)]
                                       for e in inside][:40]})
    # the host's waits on the device, in order, each with the op and stage it happened in
    waits = [[round(e["dur"] / 1000, 3), *enclosing(e)] for e in sorted(events, key=lambda e: e.get("ts", 0))
             if e.get("cat") == "cuda_runtime" and e.get("name") in WAITS and "dur" in e]
    span = (kernels[-1]["ts"] + kernels[-1]["dur"] - kernels[0]["ts"]) / 1000 if kernels else 0.0
    return {"device_ms": sum(k["dur"] for k in kernels) / 1000, "span_ms": span,
            "phases": phase_split(events, kernels, launches),
            "idle_ms": sum(g for g, _ in gaps), "idle_over_1ms": sum(g for g, _ in gaps if g > 1.0),
            "kernels": table(by_kernel), "host_ops": table(ops), "idle_before": table(by_stage),
            "longest_gaps": longest, "anatomy": anatomy, "waits": waits}


def phase_split(events: list[dict], kernels: list[dict], launches: dict) -> list[list]:
    """Per phase of a training step (the host's time before ``pb:backward``, inside it, after it): the host ms it
    took, and the ms of kernels it launched, from its first kernel's start to its last's end (span) and busy.
    A phase whose span is near its kernels' is bound by the device; one whose host ms is near its span, by the
    host: the forward's launches count where it waits on the host, the backward's kernels where it does not."""
    ranges = [e for e in events if e.get("name") == PREFIX + "backward" and "dur" in e]
    if not ranges or not kernels:
        return []
    start, end = ranges[0]["ts"], ranges[0]["ts"] + ranges[0]["dur"]
    first = min(e["ts"] for e in events if e.get("cat") in ("cpu_op", "user_annotation") and "ts" in e)
    last = max(e["ts"] + e.get("dur", 0) for e in events if e.get("cat") in ("cpu_op", "user_annotation"))
    phases = {"forward": [], "backward": [], "after": []}
    for k in kernels:
        launch = launches.get(k["args"].get("correlation"))
        at = k["ts"] if launch is None else launch["ts"]
        phases["forward" if at < start else "backward" if at <= end else "after"].append(k)
    host = {"forward": start - first, "backward": end - start, "after": max(last - end, 0)}
    rows = []
    for name, ks in phases.items():
        busy = sum(k["dur"] for k in ks)
        span = (max(k["ts"] + k["dur"] for k in ks) - min(k["ts"] for k in ks)) if ks else 0.0
        rows.append([name, round(host[name] / 1000, 3), round(span / 1000, 3), round(busy / 1000, 3), len(ks)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["frozen:train:3", "gem:train:3"], help="method:mode:batch")
    parser.add_argument("--points", type=int, default=102400)
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--backbone", default="sonata")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--conv-backend", default="auto", help="sparse-conv backend (auto, spconv, gather, torch)")
    parser.add_argument("--anatomy", nargs="*",
                        default=["_SpconvConv", "_SpconvConvBackward", "SparseImplicitGemmFunction"],
                        help="ranges whose first calls are listed with what runs inside them")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--set", nargs="*", default=[], metavar="MODULE:NAME=VALUE",
                        help="integer settings made first, e.g. "
                        "peftbench.backbone.triton_latent_attention:PROGRAMS=528")
    args = parser.parse_args()
    set_integers(args.set)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_default_backend(args.conv_backend)
    work = [w.split(":") for w in args.workloads]
    scenes = synthetic_scenes(args.points, max(int(b) for _, _, b in work))
    results = []
    for method, mode, batch_size in work:
        model = bench_model(args.backbone, method, device, args.dtype).train(mode == "train")
        batch = collate_points(scenes[: int(batch_size)])
        inputs = model_inputs(to_device(batch, device))
        target = batch["segment"].to(device).clamp(min=0)
        infer, train = step_functions(model, [], model, inputs, target, lambda: autocast_for(device, args.dtype),
                                      grad_to_input=method == FROZEN)
        fn = infer if mode == "infer" else train
        row = {"method": method, "mode": mode, "conv_backend": args.conv_backend, "batch_size": int(batch_size),
               **timed(fn, device, args.steps)}
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize()
        with stage_ranges(model), torch.profiler.profile(activities=activities) as prof:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
        row.update(kernel_tables(prof, args.top, tuple(args.anatomy)))
        results.append(row)
        print(f"== {method} {mode} b{batch_size} ({args.conv_backend}): {row['ms']:.1f} ms wall, "
              f"{row['host_ms']:.1f} host; profiled step: {row['device_ms']:.1f} ms of kernels in a "
              f"{row['span_ms']:.1f} ms span, idle {row['idle_ms']:.1f} ({row['idle_over_1ms']:.1f} in gaps over 1 ms)")
        if row["phases"]:
            print("  phases (host ms, kernels' span ms, kernels' busy ms, kernels):")
            for name, host, span, busy, n in row["phases"]:
                print(f"   {name:9s} {host:8.3f} {span:8.3f} {busy:8.3f} {n:6d}")
        for title, key in (("kernels (ms, count)", "kernels"), ("host ops (own ms, count)", "host_ops"),
                           ("device idle before a launch, by stage (ms, gaps)", "idle_before")):
            print(f"  {title}:")
            for name, ms, n in row[key][:args.top]:
                print(f"   {ms:8.3f} {n:6d}  {name}")
        print("  longest gaps (ms, stage, op launching the next kernel):")
        for g, stage, op in row["longest_gaps"][:15]:
            print(f"   {g:8.3f}  {stage} / {op}")
        print(f"  waits on the device ({len(row['waits'])}, ms, stage / op):")
        for ms, op, stage in row["waits"]:
            print(f"   {ms:8.3f}  {stage} / {op}")
        for call in row["anatomy"]:
            print(f"  {call['range']}: {call['us']} us: " + "; ".join(f"{n} +{t}/{d}" for n, t, d in call["inside"]))
        del infer, train, model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
