#!/usr/bin/env python
"""Seconds per scene of a trial's evaluation: validation per ``train.val_batch_size`` and Sonata's
voting test (13 augmentations x fragments) per ``train.test_fragments_per_pass``.

A Sonata-size PTv3 (random init, a method applied, frozen weights stored as the trainer stores them)
evaluates synthetic rooms as a paper trial does, timed per scene with the peak memory; each
setting's predictions are compared with the first setting's (argmax agreement, or the confusion).

    python scripts/eval_bench.py --val-batch 1 4 8 --per-pass 1 4 8 --scenes 4 --json out.json
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
from peftbench.data.collate import collate_points  # noqa: E402
from peftbench.data.synthetic import generate_scene  # noqa: E402
from peftbench.data.transforms import sonata_val_transform  # noqa: E402
from peftbench.model import Segmentor  # noqa: E402
from peftbench.registry import build_method  # noqa: E402
from peftbench.train.config import TrainConfig  # noqa: E402
from peftbench.train.trainer import Trainer  # noqa: E402
from peftbench.train.voting import vote_scene  # noqa: E402

CLASSES = 20


def timed(fn, device: torch.device) -> tuple[float, float, object]:
    """(seconds, peak GiB, result) of ``fn()``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    peak = float("nan")
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    return time.perf_counter() - start, peak, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val-batch", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--per-pass", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--scenes", type=int, default=4, help="validation scenes (voting: the first two)")
    parser.add_argument("--points-per-m2", type=float, default=1400.0, help="room density (gpu_smoke's dense rooms)")
    parser.add_argument("--method", default="gem")
    parser.add_argument("--backbone", default="sonata")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    scenes = [generate_scene("target", rng, points_per_m2=args.points_per_m2) for _ in range(args.scenes)]
    torch.manual_seed(0)
    model = Segmentor(backbone_config(args.backbone), CLASSES)
    method = build_method(args.method, None)
    method.apply(model)
    trainer = Trainer(model, method, TrainConfig(), device, CLASSES)  # AMP and frozen weights as in a trial
    amp = trainer.use_amp
    rows = []

    val = [sonata_val_transform(0.02)(scene, np.random.default_rng(i)) for i, scene in enumerate(scenes)]
    first = None
    for size in args.val_batch:
        loader = [collate_points(val[i:i + size]) for i in range(0, len(val), size)]
        trainer.evaluate(loader)  # warm-up: kernels of these sizes
        seconds, peak, (_, confusion) = timed(lambda: trainer.evaluate(loader), device)
        first = confusion if first is None else first
        # points whose prediction moved (the order shuffle is drawn per forward), from the confusions
        moved = float((confusion - first).abs().sum()) / max(2 * float(first.sum()), 1.0)
        rows.append({"kind": "validation", "val_batch_size": size, "seconds_per_scene": seconds / len(val),
                     "peak_gib": peak, "share_moved_against_first": moved})
        print(f"validation, {size:>2} scenes a forward: {1000 * seconds / len(val):.1f} ms a scene, "
              f"peak {peak:.1f} GiB, predictions moved against the first setting: {100 * moved:.2f} % at most",
              flush=True)

    if args.val_batch:  # the noise floor: the first setting again with other order shuffles (a new draw moves predictions)
        trainer.seed += 1
        _, reshuffled = trainer.evaluate([collate_points(val[i:i + args.val_batch[0]])
                                          for i in range(0, len(val), args.val_batch[0])])
        trainer.seed -= 1
        floor = float((reshuffled - first).abs().sum()) / max(2 * float(first.sum()), 1.0)
        rows.append({"kind": "validation_reshuffled", "val_batch_size": args.val_batch[0],
                     "share_moved_against_first": floor})
        print(f"validation, {args.val_batch[0]:>2} scenes a forward, other shuffles: predictions moved {100 * floor:.2f} % "
              "at most (the noise floor)", flush=True)

    def vote(i: int, per_pass: int, shuffle_seed: int = 0) -> torch.Tensor:
        generator = torch.Generator(device=device).manual_seed(shuffle_seed)
        return vote_scene(model, scenes[i], CLASSES, device=device, generator=generator, rng=np.random.default_rng([0, i]),
                          amp=amp, amp_dtype=trainer.amp_dtype, fragments_per_pass=per_pass)

    first = None
    for per_pass in args.per_pass:
        vote(0, per_pass)  # warm-up: kernels of these sizes
        seconds, peaks, probs = [], [], []
        for i in range(min(2, len(scenes))):
            s, peak, out = timed(lambda: vote(i, per_pass), device)
            seconds.append(s)
            peaks.append(peak)
            probs.append(out.cpu())
        first = first or probs
        agree = float(np.mean([(p.argmax(1) == q.argmax(1)).float().mean().item() for p, q in zip(probs, first)]))
        rows.append({"kind": "voting", "fragments_per_pass": per_pass, "seconds_per_scene": seconds, "peak_gib": peaks,
                     "argmax_agreement_with_first": agree})
        print(f"voting, {per_pass:>2} fragments a pass: {np.median(seconds):.2f} s a scene (median of {len(seconds)}), "
              f"peak {max(peaks):.1f} GiB, argmax agreement with the first setting: {agree:.4f}", flush=True)
    if first is not None:
        other = [vote(i, args.per_pass[0], shuffle_seed=1).cpu() for i in range(len(first))]
        floor = float(np.mean([(p.argmax(1) == q.argmax(1)).float().mean().item() for p, q in zip(other, first)]))
        rows.append({"kind": "voting_reshuffled", "fragments_per_pass": args.per_pass[0],
                     "argmax_agreement_with_first": floor})
        print(f"voting, {args.per_pass[0]:>2} fragments a pass, other shuffles: argmax agreement {floor:.4f} "
              "(the noise floor)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "method": args.method,
                                         "points": [len(s["coord"]) for s in scenes], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
