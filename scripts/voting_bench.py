#!/usr/bin/env python
"""Seconds per scene of Sonata's voting test (13 augmentations x fragments) per ``fragments_per_pass``.

A Sonata-size PTv3 (random init, a method applied) votes synthetic rooms as a paper trial's final
test does (``train.test_fragments_per_pass``), timed per scene with the peak memory; each setting's
predictions (argmax) are compared with the first setting's.

    python scripts/voting_bench.py --per-pass 1 4 8 --scenes 2 --points-per-m2 1400 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftbench.backbone import backbone_config  # noqa: E402
from peftbench.data.synthetic import generate_scene  # noqa: E402
from peftbench.model import Segmentor  # noqa: E402
from peftbench.registry import build_method  # noqa: E402
from peftbench.train.precision import store_frozen_weights  # noqa: E402
from peftbench.train.voting import vote_scene  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-pass", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--points-per-m2", type=float, default=1400.0, help="room density (gpu_smoke's dense rooms)")
    parser.add_argument("--method", default="gem")
    parser.add_argument("--backbone", default="sonata")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"
    rng = np.random.default_rng(0)
    scenes = [generate_scene("target", rng, points_per_m2=args.points_per_m2) for _ in range(args.scenes)]
    torch.manual_seed(0)
    model = Segmentor(backbone_config(args.backbone), 20)
    build_method(args.method, None).apply(model)
    model.to(device).eval()
    if amp:
        store_frozen_weights(model, torch.float16)  # as the trainer does under autocast
    rows, first = [], None
    for per_pass in args.per_pass:
        seconds, peaks, probs = [], [], []
        for i, scene in enumerate(scenes):
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            generator = torch.Generator(device=device).manual_seed(0)
            out = vote_scene(model, scene, 20, device=device, generator=generator, rng=np.random.default_rng([0, i]),
                             amp=amp, fragments_per_pass=per_pass)
            if device.type == "cuda":
                torch.cuda.synchronize()
                peaks.append(torch.cuda.max_memory_allocated() / 2**30)
            seconds.append(time.perf_counter() - start)
            probs.append(out.cpu())
        first = first or probs
        agree = float(np.mean([(p.argmax(1) == q.argmax(1)).float().mean().item() for p, q in zip(probs, first)]))
        rows.append({"fragments_per_pass": per_pass, "seconds_per_scene": seconds, "peak_gib": peaks,
                     "points": [len(s["coord"]) for s in scenes], "argmax_agreement_with_first": agree})
        print(f"fragments per pass {per_pass:>3}: {np.median(seconds):.2f} s a scene (median of {len(seconds)}), "
              f"peak {max(peaks, default=float('nan')):.1f} GiB, argmax agreement with {args.per_pass[0]}: {agree:.4f}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "method": args.method, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
