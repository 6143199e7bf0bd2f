"""Ops and autograd nodes of one GEM Context Adapter call, forward and backward, on CPU (issue 12).

GEM's training step waits on the host's kernel launches; this counts what one Context Adapter call
(its projections, its core, its read-out, a loss on both outputs) launches as top-level ops and
autograd nodes under CPU autocast, the same on any machine.

    python scripts/context_adapter_ops.py --scenes 3 --points 1000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftbench.registry import discover, get_method  # noqa: E402
from scripts.step_ops import count_ops  # noqa: E402



class _Point(dict):
    """What a Context Adapter reads from a point batch: scene index and state, and its caches."""

    def __init__(self, batch: torch.Tensor, num_scenes: int) -> None:
        super().__init__()
        self.batch, self.num_scenes, self.scene_state = batch, num_scenes, {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--points", type=int, default=1000, help="points per scene")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    discover()
    gem = sys.modules[get_method("gem").__module__]
    torch.manual_seed(0)
    batch = torch.arange(args.scenes).repeat_interleave(args.points)
    adapter = gem.ContextAdapter(args.channels, args.rank, "shared_qk", None)
    torch.nn.init.normal_(adapter.up.weight, std=0.05)
    latents = torch.randn(args.scenes, 4, args.rank, requires_grad=True)
    h = torch.randn(len(batch), args.channels, requires_grad=True)
    point = _Point(batch, args.scenes)

    def call() -> None:
        point.scene_state["gem_latents"] = latents  # the level's cached scene bias stays, as in a block
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = adapter(point, h)
            loss = out.float().square().sum() + point.scene_state["gem_latents"].square().sum()
        loss.backward()

    call()  # builds the level's cache
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    ops, nodes = count_ops(prof)
    print(f"one Context Adapter call, forward and backward: {sum(ops.values())} top-level ops, "
          f"{sum(nodes.values())} autograd nodes")
    for name, count in ops.most_common():
        print(f"  {count:4d}  {name}")


if __name__ == "__main__":
    main()
