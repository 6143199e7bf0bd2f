"""``peftbench bench``: time and memory of inference and train steps per method on synthetic scenes."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    import torch

    from peftbench.bench import bench_method, format_rows, synthetic_scenes
    from peftbench.data.collate import collate_points
    from peftbench.registry import discover

    discover(args.methods_dir)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = args.batch_sizes or [args.batch_size]
    scenes = synthetic_scenes(args.points, max(sizes), args.grid_size)
    batches = {b: collate_points(scenes[:b]) for b in sizes}
    dtypes = args.dtypes if args.amp and device.type == "cuda" else ["fp32"]  # autocast only on CUDA
    print(f"bench: backbone {args.backbone}, batch {sizes} x {args.points} points, {device}, "
          f"dtypes {dtypes}, median of {args.steps} steps", flush=True)
    rows = []
    for method in args.methods:
        new = bench_method(args.backbone, method, batches, device, args.steps, dtypes, profile=args.profile,
                           compile=args.compile)
        rows += new
        print("\n".join(format_rows(new).splitlines()[0 if len(rows) == len(new) else 1:]), flush=True)
    from peftbench.hardware import hardware_name

    result = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "hardware": hardware_name(device),  # what `run --dry-run` matches, as runs record it
              "torch": torch.__version__, "args": vars(args) | {"func": None}, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    if args.report:
        from peftbench.bench_report import write_bench_report

        reference = json.loads(Path(args.reference).read_text()) if args.reference else None
        for path in write_bench_report(result, reference, Path(args.report)):
            print(f"wrote {path}", flush=True)
    return 0
