"""``peftbench bench``: time and memory of inference and training steps per method, on synthetic
scenes cropped to a fixed point count. No data, weights, MLflow or Ray needed (runs on GPU boxes).

Workloads match ``reference/performance.md`` (and ``scripts/reference_bench.py``, which runs the
reference on the same scenes with the same head, loss and optimizer):

* ``infer``: forward of backbone, hypercolumn and head, no autograd;
* ``train``: forward, cross-entropy, backward, AdamW step over the method's trainable set.
  ``full`` is full fine-tuning; ``frozen`` (no method) freezes the whole backbone but lets the
  gradient flow through every block to the input -- the cost floor of any method that inserts
  modules into every block (the paper's Table 7 baseline); every PEFT method is that plus its own
  modules.

One model is built per method and timed on every batch size and autocast dtype asked for.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from peftbench.backbone import backbone_config
from peftbench.data.collate import collate_points
from peftbench.data.synthetic import generate_scene
from peftbench.data.transforms import (CenterShift, Collect, Compose, GridSample, NormalizeColor, SphereCrop,
                                       ToTensor)
from peftbench.errors import PeftbenchError
from peftbench.method import count_parameters
from peftbench.model import Segmentor
from peftbench.registry import build_method
from peftbench.train.losses import segmentation_loss
from peftbench.train.precision import store_frozen_weights
from peftbench.train.trainer import model_inputs, to_device

FROZEN = "frozen"  # a workload, not a registered method: linear probe + gradient through every block
AMP_DTYPES: dict[str, torch.dtype | None] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def synthetic_batch(points: int, batch_size: int, grid_size: float = 0.02, seed: int = 0) -> dict:
    """``batch_size`` synthetic rooms, grid-sampled, each cropped to ``points`` (Sonata's crop)."""
    return collate_points(synthetic_scenes(points, batch_size, grid_size, seed))


def synthetic_scenes(points: int, count: int, grid_size: float = 0.02, seed: int = 0) -> list[dict]:
    """The scenes of ``synthetic_batch``; ``collate_points(scenes[:b])`` is its batch of ``b``."""
    rng = np.random.default_rng(seed)
    transform = Compose([CenterShift(apply_z=True), GridSample(grid_size, mode="train", return_grid_coord=True),
                         SphereCrop(point_max=points, mode="center"), CenterShift(apply_z=False),
                         NormalizeColor(), ToTensor(), Collect(keys=("coord", "grid_coord", "segment"))])
    samples = []
    for _ in range(count):
        density = 500.0
        sample = transform(generate_scene("target", rng, points_per_m2=density), rng)
        while len(sample["coord"]) < points and density < 50000:  # denser until the crop is full
            density *= 2
            sample = transform(generate_scene("target", rng, points_per_m2=density), rng)
        samples.append(sample)
    return samples


def autocast_for(device: torch.device, dtype: str):
    """The autocast context of a dtype name (``fp32``: none); autocast only on CUDA."""
    if dtype not in AMP_DTYPES:
        raise PeftbenchError(f"bench: unknown dtype {dtype!r}; choose from {list(AMP_DTYPES)}")
    amp = AMP_DTYPES[dtype]
    return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None and device.type == "cuda")


def timed(fn: Callable[[], Any], device: torch.device, steps: int, warmup: int = 2) -> dict[str, float]:
    """Median wall and host (until ``fn`` returns, before the final sync) ms, the fastest wall ms,
    and peak GiB."""
    wall, host = [], []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps + warmup):  # warm-up: allocator, cuDNN/SDPA kernel choice, spconv tuning
        start = time.perf_counter()
        fn()
        returned = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall.append(time.perf_counter() - start)
        host.append(returned - start)
    out = {"ms": 1000 * float(np.median(wall[warmup:])), "host_ms": 1000 * float(np.median(host[warmup:])),
           "min_ms": 1000 * float(np.min(wall[warmup:]))}  # the least host-jitter-bound step
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int, steps: int,
                warmup: int = 2, order_seed: int | None = None) -> dict[str, list[float]]:
    """Per function, the median wall ms of ``steps`` steps in each of ``rounds`` rounds, the functions
    taking turns (A B C, A B C, ...). One workload's step moves ~15 % between processes on a lent GPU
    machine, and more between machines; taken in turns, a drift of the host falls on every function
    alike, and ``round_ratios`` compares two of them round by round. With ``order_seed``, each round's
    order is drawn anew (where a step runs faster after a step of the same kind, a fixed order favours some)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds_ms: dict[str, list[float]] = {name: [] for name in fns}
    order, rng = list(fns.items()), None if order_seed is None else random.Random(order_seed)
    for _ in range(rounds):
        if rng is not None:
            rng.shuffle(order)
        for name, fn in order:
            rounds_ms[name].append(timed(fn, device, steps, warmup=0)["ms"])
    return rounds_ms


def round_ratios(rounds_ms: dict[str, list[float]], numerator: str, denominator: str) -> dict[str, float]:
    """Median, min and max over the rounds of ``numerator``'s ms over ``denominator``'s."""
    ratios = [a / b for a, b in zip(rounds_ms[numerator], rounds_ms[denominator], strict=True)]
    return {"median": float(np.median(ratios)), "min": min(ratios), "max": max(ratios)}


def bench_model(backbone: str, method: str, device: torch.device, dtype: str, settings: dict | None = None,
                overrides: dict | None = None) -> Segmentor:
    """A Segmentor with ``method`` (or ``frozen``: the linear probe) on ``device``; under autocast its
    frozen weights stored in the autocast dtype, as the trainer stores them (``store_frozen_weights``)."""
    torch.manual_seed(0)
    model = Segmentor(backbone_config(backbone, **(overrides or {})), 20)
    build_method("linear" if method == FROZEN else method, settings).apply(model)
    model.to(device)
    amp = AMP_DTYPES.get(dtype) if device.type == "cuda" else None  # unknown: autocast_for says so
    if amp is not None:
        store_frozen_weights(model, amp)
    return model


def step_functions(model: torch.nn.Module, head_params: list[torch.nn.Parameter], forward: Callable[[dict], Any],
                   inputs: dict, target: torch.Tensor, autocast_ctx: Callable[[], Any], grad_to_input: bool,
                   fused_optimizer: bool = True) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(infer, train)`` closures; shared by our models and the reference (same loss, AdamW). The AdamW is
    fused on CUDA as our trainer builds it (``train.optim.build_optimizer``); the reference passes
    ``fused_optimizer=False``, as Pointcept builds its AdamW."""
    from torch.autograd.profiler import record_function

    trainable = [p for p in model.parameters() if p.requires_grad] + head_params
    fused = fused_optimizer and all(p.is_cuda for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=fused or None)
    train_inputs = dict(inputs)
    if grad_to_input:  # frozen backbone: the gradient must still flow through every block
        train_inputs["feat"] = inputs["feat"].clone().requires_grad_(True)

    def infer() -> None:
        with torch.no_grad(), autocast_ctx():
            forward(inputs)

    def train() -> None:
        with autocast_ctx():
            logits = forward(train_inputs)
            with record_function("pb:loss"):
                loss = segmentation_loss(logits, target, lovasz_weight=0.0)
        optimizer.zero_grad(set_to_none=True)
        with record_function("pb:backward"):
            loss.backward()
        with record_function("pb:optimizer"):
            optimizer.step()

    return infer, train


def bench_method(backbone: str, method: str, batches: dict[int, dict], device: torch.device, steps: int,
                 dtypes: list[str], settings: dict | None = None, overrides: dict | None = None,
                 profile: bool = False, modes: tuple[str, ...] = ("infer", "train"), compile: bool = False
                 ) -> list[dict[str, Any]]:
    """One row per (batch size, dtype) of ``batches`` x ``dtypes`` for ``method`` (or ``frozen``).

    One model per dtype (``bench_model``)."""
    rows = []
    for dtype in dtypes:
        model = bench_model(backbone, method, device, dtype, settings, overrides)
        if compile:  # the first (warm-up) steps pay the compile
            from peftbench.backbone.compiled import compile_blocks

            compile_blocks(model)
        trainable, total = count_parameters(model)
        for batch_size, batch in batches.items():
            inputs = model_inputs(to_device(batch, device))
            target = batch["segment"].to(device).clamp(min=0)
            infer, train = step_functions(model, [], model, inputs, target, lambda: autocast_for(device, dtype),
                                          grad_to_input=method == FROZEN)
            row: dict[str, Any] = {"impl": "peftbench", "method": method, "batch_size": batch_size, "compiled": compile,
                                   "dtype": dtype, "points": len(target), "trainable": trainable, "total": total}
            for name, fn, train_mode in (("infer", infer, False), ("train", train, True)):
                if name not in modes:
                    continue
                model.train(train_mode)
                row.update({f"{name}_{k}": v for k, v in timed(fn, device, steps).items()})
                if profile:
                    from peftbench.bench_stages import stage_breakdown

                    row[f"{name}_stages"], row[f"{name}_host_stages"] = stage_breakdown(model, fn, device)
            rows.append(row)
            del infer, train  # the optimizer state goes with them
            model.zero_grad(set_to_none=True)  # so no gradient inflates the next row's peak
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del model
    rows.sort(key=lambda r: (r["batch_size"], dtypes.index(r["dtype"])))  # batch-major, as before
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    cols = ["impl", "method", "batch_size", "dtype", "points", "infer_ms", "train_ms", "infer_peak_gib",
            "train_peak_gib"]
    cols = [c for c in cols if any(c in r for r in rows)]
    lines = [" ".join(f"{c:>14}" for c in cols)]
    for r in rows:
        cells = [f"{r[c]:>14.1f}" if isinstance(r.get(c), float) else f"{r.get(c, ''):>14}" for c in cols]
        lines.append(" ".join(cells))
    return "\n".join(lines)
