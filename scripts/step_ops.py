#!/usr/bin/env python
"""Host work of one training (or inference) step per method, counted on CPU (issue 12): top-level torch ops (views
left out), autograd nodes evaluated in the backward and autograd Functions applied (the optimizer's step left out),
for ``peftbench bench``'s models.

A GPU step of GEM waits on the host's work for each op and node; the counts are the same on any machine for the
code paths CPU runs. The sparse convs take ``--conv-backend`` (``gather``: the conv Function a CUDA step takes).
With ``--kernels``, GEM's Context Adapter and Spatial Adapter read-out take their Triton kernels as on CUDA,
run by Triton's interpreter on CPU tensors (``.venv/triton-tests``), and their launches are counted (the ops
inside the interpreter are not). Still as on CPU, not as on a GPU: no autocast, torch's LayerNorm, the gathered
conv's torch ops in place of its kernels (the same autograd node).

    python scripts/step_ops.py --methods frozen gem --points 2000 --json ops.json
    python scripts/step_ops.py --methods gem --points 300 --kernels
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if "--kernels" in sys.argv:  # read when Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"
    sys.path.append(str(ROOT / ".venv" / "triton-tests"))

import torch  # noqa: E402

sys.path.insert(0, str(ROOT))

from peftbench.backbone import latent_attention, relu_linear, sparse_conv  # noqa: E402
from peftbench.backbone.triton_support import triton_kernels  # noqa: E402
from peftbench.bench import FROZEN, autocast_for, bench_model, step_functions, synthetic_scenes  # noqa: E402
from peftbench.data.collate import collate_points  # noqa: E402
from peftbench.registry import discover, get_method  # noqa: E402
from peftbench.train.trainer import model_inputs  # noqa: E402

VIEWS = {"aten::view", "aten::t", "aten::transpose", "aten::as_strided", "aten::split", "aten::narrow", "aten::slice",
         "aten::reshape", "aten::expand", "aten::unsqueeze", "aten::detach", "aten::alias", "aten::permute",
         "aten::empty", "aten::empty_strided", "aten::resolve_conj", "aten::resolve_neg", "aten::_unsafe_view",
         "aten::lift_fresh", "aten::numpy_T", "aten::select", "aten::squeeze", "aten::expand_as", "aten::result_type"}


def count_ops(prof: torch.profiler.profile, skip: tuple[str, ...] = ()) -> tuple[collections.Counter, collections.Counter]:
    """``(ops, nodes)`` of a CPU profile: top-level aten ops that are not views, and autograd nodes evaluated, by
    name; none under a ``record_function`` of ``skip`` (the optimizer's step: a few fused kernels on a GPU, a loop
    of ops a parameter on CPU; the interpreter's kernels)."""
    ops, nodes = collections.Counter(), collections.Counter()
    for e in prof.events():
        parent, skipped = e.cpu_parent, False
        top = True
        while parent is not None:
            skipped |= parent.name in skip
            top &= not parent.name.startswith("aten::")
            parent = parent.cpu_parent
        if skipped or e.name in skip:
            continue
        if e.name.startswith("autograd::engine::evaluate_function: "):
            nodes[e.name.split(": ", 1)[1]] += 1
        elif e.name.startswith("aten::") and top and e.name not in VIEWS:
            ops[e.name] += 1
    return ops, nodes


def take_kernels_on_cpu(run: bool = True) -> collections.Counter:
    """GEM's latent attention and ReLU-linear kernels taken on CPU tensors (Triton's interpreter), as on CUDA; the
    launches counted by kernel, run under ``pb:triton`` (left out of the op counts), or with ``run`` False not run
    at all (the host's path to each launch without the launch: ``host_proxy.py``)."""
    latent = triton_kernels("triton_latent_attention")
    if latent is None:
        raise SystemExit("Triton does not import (./setup.sh puts it in .venv/triton-tests)")

    def kernels_take(points: torch.Tensor, latents_per_scene: int):
        return latent if latents_per_scene <= latent_attention.KERNEL_MAX_LATENTS else None

    latent_attention.kernels_take = sys.modules[get_method("gem").__module__].kernels_take = kernels_take
    relu_linear._kernels_for = lambda base, a, weight: (
        triton_kernels("triton_relu_linear") if base.dtype == weight.dtype == torch.float32 else None)
    launches = collections.Counter()
    for module in ("triton_latent_attention", "triton_relu_linear"):
        kernels = triton_kernels(module)
        original = kernels.launch

        def counting_launch(kernel, *args, _original=original, **kwargs):
            launches[kernel.__name__ if hasattr(kernel, "__name__") else kernel.fn.__name__] += 1
            if run:
                with torch.profiler.record_function("pb:triton"):
                    _original(kernel, *args, **kwargs)
        kernels.launch = counting_launch
    return launches


def step_counts(method: str, batch: dict, backbone: str, launches: collections.Counter | None,
                mode: str = "train") -> dict:
    """One step's ops and nodes for ``method`` (``train``, or ``infer``: a forward without autograd), after two
    warm-up steps."""
    model = bench_model(backbone, method, torch.device("cpu"), "fp32").train(mode == "train")
    target = batch["segment"].clamp(min=0)
    infer, train = step_functions(model, [], model, model_inputs(batch), target,
                                  lambda: autocast_for(torch.device("cpu"), "fp32"), grad_to_input=method == FROZEN)
    step = train if mode == "train" else infer
    for _ in range(2):
        step()
    if launches is not None:
        launches.clear()
    applied = collections.Counter()
    original = torch.autograd.Function.apply.__func__

    def counting_apply(cls, *args, **kwargs):
        applied[cls.__name__] += 1
        return original(cls, *args, **kwargs)

    torch.autograd.Function.apply = classmethod(counting_apply)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
    finally:
        torch.autograd.Function.apply = classmethod(original)
    ops, nodes = count_ops(prof, skip=("pb:optimizer", "pb:triton"))
    return {"method": method, "mode": mode, "ops": sum(ops.values()), "nodes": sum(nodes.values()),
            "functions": sum(applied.values()), "triton_launches": sum((launches or {}).values()),
            "ops_by_name": dict(ops.most_common()), "nodes_by_name": dict(nodes.most_common()),
            "functions_by_name": dict(applied.most_common()), "launches_by_kernel": dict(launches or {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=[FROZEN, "gem"])
    parser.add_argument("--backbone", default="sonata")
    parser.add_argument("--points", type=int, default=2000, help="points a scene")
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--conv-backend", default="gather", choices=sparse_conv.BACKENDS)
    parser.add_argument("--kernels", action="store_true", help="GEM's Triton kernels through the interpreter")
    parser.add_argument("--top", type=int, default=12, help="ops and nodes listed per method")
    parser.add_argument("--json")
    args = parser.parse_args()
    discover()
    sparse_conv.set_default_backend(args.conv_backend)
    batch = collate_points(synthetic_scenes(args.points, args.batch_size))
    launches = take_kernels_on_cpu() if args.kernels else None
    rows = []
    for method in args.methods:
        row = step_counts(method, batch, args.backbone, launches, args.mode)
        rows.append(row)
        print(f"{method}: {row['ops']} top-level ops, {row['nodes']} autograd nodes, {row['functions']} Functions "
              f"applied" + (f", {row['triton_launches']} Triton launches" if args.kernels else ""), flush=True)
        for key in ("ops_by_name", "nodes_by_name"):
            print("   " + ", ".join(f"{name} {n}" for name, n in list(row[key].items())[:args.top]))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
