#!/usr/bin/env python
"""Host-side Python cost of our Triton launches, without a GPU (issue 12): the launch key
(``triton_launch._specialization``), a whole ``launch`` through a stand-in launcher that launches nothing,
``cdiv`` / ``next_power_of_2`` against Triton's, and the latent attention's ``Plan``. Medians of 5 runs.

    PYTHONPATH=.venv/triton-tests python scripts/launch_host_cost.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peftbench.backbone import triton_launch  # noqa: E402
from peftbench.backbone import triton_latent_attention as latent  # noqa: E402


def median_us(fn: Callable[[], object], calls: int = 20_000) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - start) / calls * 1e6)
    return sorted(runs)[2]


def main() -> None:
    kernel = latent._context_backward_kernel  # 26 runtime arguments, 7 constexprs
    args = [torch.empty(16) if p.name.endswith("ptr") else (0.5 if p.name == "scale" else 7)
            for p in kernel.params if not p.is_constexpr]
    constexprs = {p.name: 16 for p in kernel.params if p.is_constexpr}
    torch.cuda.current_device = lambda: 0  # no GPU here: the key's device
    key = (kernel, 0, triton_launch.DIRECT_LAUNCHER, None, *constexprs.items(), triton_launch._specialization(args))
    triton_launch._COMPILED[key] = lambda *args: None  # a launcher that launches nothing
    rows = [("launch key, %d arguments" % len(args), lambda: triton_launch._specialization(args)),
            ("launch, stand-in kernel", lambda: triton_launch.launch(kernel, (5,), *args, **constexprs)),
            ("triton.cdiv", lambda: triton.cdiv(300_000, 64)),
            ("triton_launch.cdiv", lambda: triton_launch.cdiv(300_000, 64)),
            ("triton.next_power_of_2", lambda: triton.next_power_of_2(48)),
            ("triton_launch.next_power_of_2", lambda: triton_launch.next_power_of_2(48)),
            ("latent attention Plan", lambda: latent.Plan(300_000, 12, 32, 4))]
    for name, fn in rows:
        print(f"{name:32s} {median_us(fn):6.2f} us")
    assert len(triton_launch._COMPILED) == 1, "the launch missed the stand-in kernel"


if __name__ == "__main__":
    main()
