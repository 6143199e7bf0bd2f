"""`peftbench bench` on CPU: the frozen workload lets the gradient reach the input, stages add up,
the report has its tables."""

from __future__ import annotations

import torch

from peftbench.bench import bench_method, format_rows, step_functions, synthetic_batch
from peftbench.bench_report import write_bench_report
from peftbench.backbone import backbone_config
from peftbench.model import Segmentor
from peftbench.registry import build_method, discover
from tests.conftest import MICRO, random_scene_batch


def test_frozen_train_step_differentiates_through_every_block() -> None:
    model = Segmentor(backbone_config("tiny", **MICRO), 5)
    build_method("linear").apply(model)
    batch = random_scene_batch()
    inputs = {k: batch[k] for k in ("coord", "grid_coord", "feat", "offset", "grid_size")}
    seen = []
    hook = model.backbone.embedding.stem.linear.register_full_backward_hook(lambda m, gi, go: seen.append(go[0]))
    _, train = step_functions(model, [], model, inputs, batch["segment"], lambda: torch.autocast("cpu", enabled=False),
                              grad_to_input=True)
    train()
    hook.remove()
    assert seen and seen[0].abs().sum() > 0  # the gradient came back to the embedding
    assert all(p.grad is None for n, p in model.backbone.named_parameters())  # nothing of the backbone trains


def test_rows_stages_and_report(tmp_path) -> None:
    discover()
    batch = synthetic_batch(points=1500, batch_size=2, grid_size=0.1)
    assert batch["offset"].tolist() == [1500, 3000]
    rows = [bench_method("tiny", m, {2: batch}, torch.device("cpu"), 1, ["fp32"], overrides=MICRO, profile=True,
                         settings={"rank": 2} if m == "gem" else None)[0] for m in ("frozen", "gem")]
    assert rows[0]["trainable"] < rows[1]["trainable"] < rows[1]["total"] and "gem" in format_rows(rows)
    gem = rows[1]
    assert gem["method"] == "gem" and gem["infer_ms"] > 0 and gem["train_ms"] > 0
    stages = gem["train_stages"]
    assert {"method branches", "attention", "serialization"} <= set(stages)
    assert abs(sum(v for k, v in stages.items() if k != "total (sum of stages)")
               - stages["total (sum of stages)"]) < 1e-6
    reference = {"flash_attn": "stand-in", "rows": [dict(impl="reference", method="frozen", batch_size=2,
                                                         dtype="fp32", points=3000, train_ms=1.0)]}
    paths = write_bench_report({"device": "cpu", "args": {"steps": 1}, "rows": rows}, reference, tmp_path)
    text = (tmp_path / "bench.md").read_text()
    assert "train, frozen backbone + gradient flow" in text and "| gem | 2 | fp32 |" in text
    assert {p.name for p in paths} >= {"bench.json", "bench.md"}
    # profiled rows: device-time columns, GEM's against frozen's summed stage times
    gem_line = next(line for line in text.splitlines() if line.startswith("| gem | 2 |"))
    device_ratio = gem["train_stages"]["total (sum of stages)"] / rows[0]["train_stages"]["total (sum of stages)"]
    assert "device train / frozen" in text and gem_line.rstrip(" |").endswith(f"{device_ratio:.2f}")
    assert rows[0]["train_min_ms"] <= rows[0]["train_ms"]


def test_interleaved_takes_turns_and_compares_round_by_round(monkeypatch) -> None:
    """Functions are timed in turns, a block of steps each per round; a host that slows down between
    rounds (here 1x, 2x, 3x) moves both alike and the round-by-round ratio stays the cost ratio."""
    import peftbench.bench as bench
    from peftbench.bench import interleaved, round_ratios

    clock, calls, slowdown = [0.0], [], [0]

    def step(name: str, cost: float):
        def fn() -> None:
            calls.append(name)
            clock[0] += cost * slowdown[0]
        return fn

    def first_of_round() -> None:  # A opens every round (after the warm-up): the host slows down
        if len(calls) >= 2 and (len(calls) - 2) % 4 == 0:
            slowdown[0] += 1

    a, b = step("a", 2.0), step("b", 1.0)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    rounds = interleaved({"a": lambda: (first_of_round(), a()), "b": b}, torch.device("cpu"), rounds=3, steps=2,
                         warmup=1)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert rounds["a"] == [2000.0, 4000.0, 6000.0] and rounds["b"] == [1000.0, 2000.0, 3000.0]
    assert round_ratios(rounds, "a", "b") == {"median": 2.0, "min": 2.0, "max": 2.0}


def test_host_proxy_draws_each_turns_order_and_pairs_each_turns_steps(monkeypatch) -> None:
    """scripts/host_proxy.py: one step of each function a turn (``interleaved`` with ``order_seed``: each once a
    turn, in an order drawn anew), and each ratio taken within a turn, so a drift of the CPU's speed from one turn to
    the next falls on both sides (the ratio of the medians would read 1 here)."""
    import sys
    from pathlib import Path

    import peftbench.bench as bench

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import host_proxy

    clock, calls = [0.0], []
    durations = {"a": iter([2.0, 8.0, 3.0, 1.0, 1.0, 1.0]), "b": iter([1.0, 4.0, 3.0, 1.0, 1.0, 1.0])}

    def step(name: str):
        def run() -> None:
            calls.append(name)
            clock[0] += next(durations[name])
        return run

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    times = bench.interleaved({"a": step("a"), "b": step("b")}, torch.device("cpu"), rounds=6, steps=1, warmup=0,
                              order_seed=0)
    assert all(sorted(calls[i:i + 2]) == ["a", "b"] for i in range(0, 12, 2))  # each once a turn
    assert calls[::2] != ["a"] * 6 and calls[::2] != ["b"] * 6  # the order is drawn, not fixed
    assert times == {"a": [2000.0, 8000.0, 3000.0, 1000.0, 1000.0, 1000.0],
                     "b": [1000.0, 4000.0, 3000.0, 1000.0, 1000.0, 1000.0]}
    assert host_proxy.turn_ratios({k: v[:3] for k, v in times.items()}, "a", "b") == {
        "median": 2.0, "q25": 1.5, "q75": 2.0}


def test_side_by_side_builds_every_workload_it_compares() -> None:
    """scripts/side_by_side.py's functions (the reference stood in for by our own PTv3, which takes the
    same constructor and gives the same hypercolumn) run, and every comparison names two of them."""
    import sys
    import types
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import side_by_side

    from peftbench.backbone import PointTransformerV3
    from peftbench.bench import synthetic_scenes
    from peftbench.data.collate import collate_points

    discover()
    batch = collate_points(synthetic_scenes(600, 2, grid_size=0.1))
    reference = types.SimpleNamespace(PointTransformerV3=PointTransformerV3)
    fns = side_by_side.step_fns(batch, torch.device("cpu"), "fp32", reference, "tiny", ["gem"])
    assert set(fns) == {"ref:infer", "ref:frozen", "ref:full", "frozen:infer", "frozen:train", "full:train",
                        "gem:infer", "gem:train"}
    assert all(a in fns and b in fns for _, a, b in side_by_side.COMPARISONS)
    for fn in fns.values():
        fn()
