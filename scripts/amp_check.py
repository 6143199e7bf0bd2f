"""Which autocast dtype should ``train.amp_dtype`` default to, and what per-GPU batch fits?

1. accuracy: one GEM train step (Sonata size by default) on a synthetic ~100k-point scene under
   fp32, fp16 and bf16 autocast from the same weights and input: loss and gradient relative errors
   against fp32, and the time of a full step (forward, backward, AdamW) per dtype;
2. sweep: peak memory and step time of frozen-backbone method train steps (LoRA and GEM) at per-GPU
   batches 3, 6, 12, 24 scenes, per autocast dtype: ``peftbench bench``'s train workload, one
   (method, batch) at a time so that an out-of-memory batch is recorded as such.

Needs only torch (+ spconv where present): no MLflow, no Ray. Results go to a JSON file, written
after every measurement so a run cut short keeps what it measured. On the GPU machine:

    PYTHONPATH=$PWD python scripts/amp_check.py $OUT/amp_check.json

and, quick on CPU: ``python scripts/amp_check.py out.json --backbone tiny --points 2000
--batch-sizes 1 2 --steps 1``. The suggested default (bf16 only if within tolerance and not slower
than fp16) is printed; README "The paper's protocol" says how amp_dtype was chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from peftbench.backbone import backbone_config  # noqa: E402
from peftbench.bench import bench_method, synthetic_scenes, timed  # noqa: E402
from peftbench.data.collate import collate_points  # noqa: E402
from peftbench.model import Segmentor  # noqa: E402
from peftbench.registry import build_method  # noqa: E402
from peftbench.train.losses import segmentation_loss  # noqa: E402
from peftbench.train.trainer import model_inputs, to_device  # noqa: E402

DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
BENCH_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # peftbench bench's names
# "As accurate": relative errors against fp32 below these (bf16 keeps 8 mantissa bits, fp16 11).
TOLERANCE = {"loss_rel_err": 5e-3, "grad_rel_err": 5e-2}
FP16_LOSS_SCALE = 2.0 ** 16  # GradScaler's initial scale: keeps fp16 gradients from underflowing


def build(backbone: str, method: str, device: torch.device) -> Segmentor:
    torch.manual_seed(0)
    model = Segmentor(backbone_config(backbone), 20)
    build_method(method).apply(model)
    with torch.no_grad():  # non-zero read-outs, so every method weight gets a gradient
        for name, p in model.named_parameters():
            if p.requires_grad and p.abs().sum() == 0 and p.dim() > 1:
                p.normal_(std=0.02)
    return model.to(device).train()


def forward_backward(model: Segmentor, batch: dict, dtype: torch.dtype | None,
                     scale: float | None = None) -> tuple[torch.Tensor, float]:
    """Loss of one deterministic step (fixed drop-path and order draws) and the loss scale used;
    gradients (unscaled) left in .grad. fp16 without a ``scale`` searches one as a GradScaler
    does: from 2^16, halved while the gradients overflow."""
    device = batch["coord"].device
    search = scale is None and dtype == torch.float16
    scale = FP16_LOSS_SCALE if search else (scale or 1.0)
    while True:
        torch.manual_seed(0)
        generator = torch.Generator(device=device).manual_seed(0)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = segmentation_loss(model(model_inputs(batch), generator), batch["segment"].clamp(min=0))
        (loss * scale).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not search or scale <= 1.0 or all(torch.isfinite(g).all() for g in grads):
            break
        model.zero_grad(set_to_none=True)
        scale /= 2
    for g in grads:
        g /= scale
    return loss.detach().float(), scale


def timed_steps(model: Segmentor, batch: dict, dtype: torch.dtype | None, steps: int, scale: float) -> float:
    """Median milliseconds of a full train step (forward, backward, AdamW) at a fixed loss scale
    after one warm-up (``steps=0``: one step, no warm-up, for a quick check)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward(model, batch, dtype, scale)
        optimizer.step()

    return timed(step, batch["coord"].device, max(steps, 1), warmup=1 if steps else 0)["ms"]


def accuracy(args: argparse.Namespace, device: torch.device, batch: dict) -> dict[str, Any]:
    model = build(args.backbone, "gem", device)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    results: dict[str, Any] = {}
    reference: dict[str, torch.Tensor] = {}
    for name, dtype in DTYPES.items():
        with torch.no_grad():  # the same weights for every dtype
            for n, p in model.named_parameters():
                if n in start:
                    p.copy_(start[n])
        model.zero_grad(set_to_none=True)
        loss, scale = forward_backward(model, batch, dtype)
        grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
        row: dict[str, Any] = {"loss": float(loss), "loss_scale": scale}
        if dtype is None:
            reference = {"loss": loss, **grads}
        else:
            row.update(compare(loss, grads, reference))
        row["step_ms"] = timed_steps(model, batch, dtype, args.steps, scale)
        results[name] = row
        print(f"accuracy {name:>8}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    return results


def compare(loss: torch.Tensor, grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict:
    ref_loss = reference["loss"]
    names = sorted(grads)
    flat = torch.cat([grads[n].flatten() for n in names])
    ref = torch.cat([reference[n].flatten() for n in names])
    per_tensor = [float((grads[n] - reference[n]).norm() / reference[n].norm()) for n in names
                  if reference[n].norm() > 0]
    row = {"loss_rel_err": float((loss - ref_loss).abs() / ref_loss.abs()),
           "grad_rel_err": float((flat - ref).norm() / ref.norm()),
           "grad_max_tensor_rel_err": max(per_tensor),
           "grad_cosine": float(torch.nn.functional.cosine_similarity(flat, ref, dim=0)),
           "grad_finite": bool(torch.isfinite(flat).all())}
    row["within_tolerance"] = row["grad_finite"] and all(row[k] <= tol for k, tol in TOLERANCE.items())
    return row


def sweep(args: argparse.Namespace, device: torch.device, scenes: list[dict], report: dict, save) -> None:
    dtypes = [BENCH_DTYPES[name] for name in args.sweep_dtypes]
    for method in args.methods:
        for size in args.batch_sizes:
            try:
                rows = bench_method(args.backbone, method, {size: collate_points(scenes[:size])}, device,
                                    max(args.steps, 1), dtypes, modes=("train",))
            except torch.cuda.OutOfMemoryError:
                rows = [{"method": method, "batch_size": size, "dtype": d, "oom": True} for d in dtypes]
            if device.type == "cuda":
                torch.cuda.empty_cache()
            report["sweep"].extend(rows)
            for row in rows:
                print("sweep " + ", ".join(f"{k} {row[k]:.4g}" if isinstance(row.get(k), float) else f"{k} {row.get(k)}"
                                           for k in ("method", "batch_size", "dtype", "points", "train_ms",
                                                     "train_peak_gib", "oom") if k in row), flush=True)
            save()


def suggestion(results: dict[str, Any]) -> str:
    bf16, fp16 = results["bfloat16"], results["float16"]
    if bf16["within_tolerance"] and bf16["step_ms"] <= 1.02 * fp16["step_ms"]:
        return "bfloat16 (within tolerance of fp32 and not slower than float16)"
    why = "outside tolerance" if not bf16["within_tolerance"] else "slower than float16"
    return f"float16 (bfloat16 is {why})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file for the results")
    parser.add_argument("--backbone", default="sonata")
    parser.add_argument("--points", type=int, default=102400, help="points per scene (Sonata's crop)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[3, 6, 12, 24])
    parser.add_argument("--methods", nargs="+", default=["lora", "gem"])
    parser.add_argument("--sweep-dtypes", nargs="+", default=["float16", "bfloat16"], choices=list(DTYPES))
    parser.add_argument("--parts", nargs="+", default=["accuracy", "sweep"], choices=["accuracy", "sweep"])
    parser.add_argument("--steps", type=int, default=2,
                        help="timed steps per measurement after warm-up (0: one step, no warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    report: dict[str, Any] = {
        "device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "args": {**vars(args), "out": Path(args.out).name}, "tolerance": TOLERANCE, "sweep": []}
    out = Path(args.out)

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))

    scenes = synthetic_scenes(args.points, max(args.batch_sizes))
    if "accuracy" in args.parts:
        report["accuracy"] = accuracy(args, device, to_device(collate_points(scenes[:1]), device))
        report["suggested_amp_dtype"] = suggestion(report["accuracy"])
        print(f"suggested train.amp_dtype: {report['suggested_amp_dtype']}", flush=True)
        save()
    if "sweep" in args.parts:
        sweep(args, device, scenes, report, save)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
