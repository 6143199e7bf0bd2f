#!/usr/bin/env python
"""Sparse-conv forward + backward per encoder level: spconv's own backward against ours
(``spconv_conv``): for a frozen weight, the input gradient alone as a mirrored forward conv; for
a trainable one, spconv's own backward or the weight gradient by gathered matmuls.

The levels are those of a Sonata-size backbone on the bench's synthetic rooms (fp16 autocast);
per level, a CPE-width conv (frozen and trainable) and a rank-r conv (GEM's Spatial Adapter,
trainable) are timed as ``peftbench bench`` times a step (median of ``--steps``); each mode's fp16 input gradient is
compared with a float32 run (max abs error / max abs value).

    python scripts/conv_backward_bench.py --points 102400 --batch-size 3 --json conv.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import peftbench.backbone.spconv_conv as spconv_conv  # noqa: E402
from peftbench.backbone.sparse_conv import SubMConv3d  # noqa: E402
from peftbench.backbone.structure import Point  # noqa: E402
from peftbench.backbone import backbone_config  # noqa: E402
from peftbench.bench import synthetic_batch, timed  # noqa: E402
from peftbench.model import Segmentor  # noqa: E402
from peftbench.train.trainer import model_inputs, to_device  # noqa: E402


def level_points(points: int, batch_size: int, device: torch.device) -> list[tuple[Point, int, str]]:
    """(point, channels, indice key) of the first block of every encoder level, from one forward pass."""
    model = Segmentor(backbone_config("sonata"), 20).to(device).train()  # train: spconv keeps backward pairs
    seen: dict[str, tuple[Point, int, str]] = {}

    def grab(block, args):
        seen.setdefault(block.indice_key, (args[0], block.channels, block.indice_key))

    hooks = [b.register_forward_pre_hook(grab) for _, b in model.backbone.encoder_blocks()]
    with torch.no_grad(), torch.autocast(device.type, torch.float16 if device.type == "cuda" else torch.bfloat16):
        model(model_inputs(to_device(synthetic_batch(points, batch_size), device)))
    for h in hooks:
        h.remove()
    return list(seen.values())


def _grads(conv: SubMConv3d, point: Point, feat: torch.Tensor, grad: torch.Tensor, half: bool
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward + backward (fp16 autocast on CUDA if ``half``); the input and weight gradients in float32."""
    feat = feat.detach().requires_grad_()
    conv.weight.grad = None
    with torch.autocast(feat.device.type, torch.float16, enabled=half and feat.is_cuda):
        conv(point, feat).backward(grad.to(feat.dtype))
    return feat.grad.float(), None if conv.weight.grad is None else conv.weight.grad.float()


def _rel_err(got: torch.Tensor | None, exact: torch.Tensor | None) -> float | None:
    return None if got is None or exact is None else float((got - exact).abs().max() / exact.abs().max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=102400)
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--reverse", action="store_true",
                        help="deepest level first, the order a backward pass meets them: spconv tunes its kernel "
                             "choice per channel count on the first call, which is then the smallest level")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    levels = level_points(args.points, args.batch_size, device)
    for point, channels, key in reversed(levels) if args.reverse else levels:
        n = len(point["grid_coord"])
        for name, width, frozen in (("cpe frozen", channels, True), ("cpe trained", channels, False),
                                    ("sa rank", args.rank, False)):
            conv = SubMConv3d(width, width, 3, bias=False, indice_key=key, backend="spconv").to(device)
            conv.train().requires_grad_(not frozen)
            dtype = torch.float16 if device.type == "cuda" else torch.float32
            feat = torch.randn(n, width, device=device, dtype=dtype)
            grad = torch.randn(n, width, device=device, dtype=dtype)
            row = {"level_points": n, "channels": width, "conv": name, "order": "reverse" if args.reverse else "forward"}
            exact, exact_w = _grads(conv, point, feat.float(), grad.float(), half=False)
            # frozen: spconv's backward (both gradients, the weight's dropped) against ours
            for mode in ("spconv", "ours" if frozen else "gather"):
                conv.weight.requires_grad_(not frozen or mode == "spconv")
                spconv_conv.WEIGHT_GRAD_BY = "spconv" if mode == "ours" else mode
                row[f"{mode}_ms"] = timed(lambda: _grads(conv, point, feat, grad, half=True), device, args.steps)["ms"]
                got, got_w = _grads(conv, point, feat, grad, half=True)
                row[f"{mode}_input_grad_rel_err"] = _rel_err(got, exact)
                row[f"{mode}_weight_grad_rel_err"] = _rel_err(got_w, exact_w)
            conv.weight.requires_grad_(not frozen)
            spconv_conv.WEIGHT_GRAD_BY = "spconv"
            rows.append(row)
            print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
