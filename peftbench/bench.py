"""``peftbench bench``: time and memory of inference and training steps per method, on synthetic
scenes cropped to a fixed point count. No data, weights, MLflow or Ray needed (runs on GPU boxes).

Workloads match ``reference/performance.md``: inference, and a train step (forward, backward,
optimizer) with each method's trainable set — ``full`` is full fine-tuning, every PEFT method is
"frozen backbone, gradient flowing through every block".
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from peftbench.backbone import backbone_config
from peftbench.data.collate import collate_points
from peftbench.data.synthetic import generate_scene
from peftbench.data.transforms import (CenterShift, Collect, Compose, GridSample, NormalizeColor, SphereCrop,
                                       ToTensor)
from peftbench.method import count_parameters
from peftbench.model import Segmentor
from peftbench.registry import build_method
from peftbench.train.losses import segmentation_loss
from peftbench.train.trainer import model_inputs, to_device


def synthetic_batch(points: int, batch_size: int, grid_size: float = 0.02, seed: int = 0) -> dict:
    """``batch_size`` synthetic rooms, grid-sampled, each cropped to ``points`` (Sonata's crop)."""
    rng = np.random.default_rng(seed)
    transform = Compose([CenterShift(apply_z=True), GridSample(grid_size, mode="train", return_grid_coord=True),
                         SphereCrop(point_max=points, mode="center"), CenterShift(apply_z=False),
                         NormalizeColor(), ToTensor(), Collect(keys=("coord", "grid_coord", "segment"))])
    samples = []
    for _ in range(batch_size):
        density = 500.0
        sample = transform(generate_scene("target", rng, points_per_m2=density), rng)
        while len(sample["coord"]) < points and density < 50000:  # denser until the crop is full
            density *= 2
            sample = transform(generate_scene("target", rng, points_per_m2=density), rng)
        samples.append(sample)
    return collate_points(samples)


def _timed(fn, device: torch.device, steps: int) -> list[float]:
    times = []
    for _ in range(steps + 2):  # two warm-up steps (allocator, cuDNN/SDPA kernel choice)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times[2:]


def bench_method(backbone: str, method: str, batch: dict, device: torch.device, steps: int, amp: bool,
                 settings: dict | None = None, overrides: dict | None = None) -> dict[str, Any]:
    torch.manual_seed(0)
    model = Segmentor(backbone_config(backbone, **(overrides or {})), 20)
    build_method(method, settings).apply(model)
    model.to(device)
    trainable, total = count_parameters(model)
    inputs = model_inputs(to_device(batch, device))
    target = batch["segment"].to(device).clamp(min=0)
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    row: dict[str, Any] = {"method": method, "trainable": trainable, "total": total, "points": len(target)}

    def infer() -> None:
        with torch.no_grad(), autocast:
            model(inputs)

    def train() -> None:
        with autocast:
            loss = segmentation_loss(model(inputs), target, lovasz_weight=0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for name, fn, mode in (("infer", infer, model.eval), ("train", train, model.train)):
        mode()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = _timed(fn, device, steps)
        row[f"{name}_ms"] = 1000 * float(np.median(times))
        if device.type == "cuda":
            row[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def format_rows(rows: list[dict[str, Any]]) -> str:
    cols = ["method", "trainable", "points", "infer_ms", "train_ms", "infer_peak_gib", "train_peak_gib"]
    cols = [c for c in cols if any(c in r for r in rows)]
    lines = [" ".join(f"{c:>14}" for c in cols)]
    for r in rows:
        cells = [f"{r[c]:>14.1f}" if isinstance(r.get(c), float) else f"{r.get(c, ''):>14}" for c in cols]
        lines.append(" ".join(cells))
    return "\n".join(lines)
