"""Data parallel inside a trial: 2 gloo processes × 3 scenes give batch 6's gradient; batch slicing."""

from __future__ import annotations

import pytest
import torch

from peftbench.backbone import backbone_config
from peftbench.data.collate import collate_points
from peftbench.errors import PeftbenchError
from peftbench.model import Segmentor
from peftbench.registry import build_method
from peftbench.train import distributed
from peftbench.train.losses import segmentation_loss
from peftbench.train.trainer import model_inputs
from tests.conftest import MICRO, random_scene_batch

SCENES = 6
POINTS = 160  # equal per scene: then the mean of per-rank means is the mean over all points


def _scenes(indices) -> dict:
    samples = []
    for i in indices:
        b = random_scene_batch(sizes=(POINTS,), seed=100 + i)
        samples.append({k: v for k, v in b.items() if k not in ("offset", "grid_size")})
    batch = collate_points(samples)
    batch["grid_size"] = 0.05
    return batch


def _model() -> Segmentor:
    torch.manual_seed(0)
    model = Segmentor(backbone_config("tiny", **MICRO), 5)
    build_method("gem", {"rank": 2}).apply(model)
    return model


def _gradients(model: torch.nn.Module, forward: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = segmentation_loss(forward(model_inputs(batch)), batch["segment"], lovasz_weight=0.0)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _rank_step(rank: int, size: int, port: int, out: str) -> None:
    """One DDP step on this rank's 3 scenes; rank 0 saves the averaged gradients."""
    torch.set_num_threads(1)
    world = distributed.join(rank, size, port)
    try:
        model = _model()
        local = distributed.per_rank_batch(SCENES, size)
        grads = _gradients(model, distributed.wrap(model, world), _scenes(range(rank * local, (rank + 1) * local)))
        if world.is_leader:
            torch.save(grads, out)
    finally:
        distributed.leave(world)


@pytest.mark.slow
def test_two_gloo_ranks_of_three_scenes_give_the_gradient_of_batch_six(tmp_path):
    out = str(tmp_path / "ddp_grads.pt")
    port = distributed.free_port()
    followers = distributed.spawn_followers(_rank_step, 2, port, out)
    _rank_step(0, 2, port, out)
    distributed.wait_followers(followers)

    model = _model()
    single = _gradients(model, model, _scenes(range(SCENES)))
    parallel = torch.load(out, weights_only=True)
    assert single.keys() == parallel.keys() and any(k.startswith("gem") or ".gem" in k for k in single)
    for name, grad in single.items():
        torch.testing.assert_close(parallel[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # Not trivially equal: one rank's own gradient (3 scenes) differs from batch 6's.
    half = _gradients(model, model, _scenes(range(3)))
    assert any(not torch.allclose(half[n], single[n], rtol=1e-3, atol=1e-6) for n in single)


def _rank_micro_batches(rank: int) -> list[dict]:
    """Two one-scene micro-batches; rank 1's second has no labelled point (a limited-annotation crop)."""
    micro = [_scenes([2 * rank]), _scenes([2 * rank + 1])]
    if rank == 1:
        micro[1]["segment"][:] = -1
    return micro


def _trainer():
    from peftbench.train.config import TrainConfig
    from peftbench.train.trainer import Trainer

    model = _model()
    config = TrainConfig(epochs=1, batch_size=2, accumulate=2, lovasz_weight=0.0, grad_clip=0.0)
    trainer = Trainer(model, build_method("gem", {"rank": 2}), config, torch.device("cpu"), 5)
    trainer.prepare(1)
    return trainer


def _trained_gradients(trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad and p.grad is not None}


def _rank_trainer_step(rank: int, size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    world = distributed.join(rank, size, port, timeout_s=60)
    try:
        trainer = _trainer()
        trainer.train_forward = distributed.wrap(trainer.model, world)
        trainer.train_step(_rank_micro_batches(rank))
        if world.is_leader:
            torch.save(_trained_gradients(trainer), out)
    finally:
        distributed.leave(world)


@pytest.mark.slow
def test_ranks_with_unequal_labelled_micro_batches_average_once_a_step(tmp_path):
    """Rank 0 runs two passes, rank 1 one (its other crop is unlabelled): gradients stay local until
    a step's last pass, so the ranks meet once and average the whole step's gradients (before, rank 0's
    second exchange had no partner)."""
    out = str(tmp_path / "ddp_step_grads.pt")
    port = distributed.free_port()
    followers = distributed.spawn_followers(_rank_trainer_step, 2, port, out)
    _rank_trainer_step(0, 2, port, out)
    distributed.wait_followers(followers)

    local = []
    for rank in range(2):
        trainer = _trainer()
        trainer.train_step(_rank_micro_batches(rank))
        local.append(_trained_gradients(trainer))
    parallel = torch.load(out, weights_only=True)
    assert parallel.keys() == local[0].keys() == local[1].keys()
    for name, grad in parallel.items():
        torch.testing.assert_close(grad, (local[0][name] + local[1][name]) / 2, rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.allclose(local[0][n], local[1][n]) for n in parallel)


def test_rank_slices_of_the_global_batches_are_what_one_process_draws():
    dataset = list(range(13))
    one = torch.utils.data.DataLoader(dataset, batch_size=6, shuffle=True, drop_last=True,
                                                  generator=torch.Generator().manual_seed(3 * 100003 + 1))
    expected = [b.tolist() for b in one]
    ranks = []
    for rank in range(2):
        loader = torch.utils.data.DataLoader(dataset, batch_size=6, shuffle=True, drop_last=True,
                                             generator=torch.Generator().manual_seed(3 * 100003 + 1))
        world = distributed.World(rank, 2, torch.device("cpu"))
        ranks.append([b.tolist() for b in distributed.shard(loader, world)])
    assert len(expected) == 2 and expected != [list(range(6)), list(range(6, 12))]  # shuffled
    assert [a + b for a, b in zip(*ranks)] == expected and all(len(b) == 3 for r in ranks for b in r)


def test_a_global_batch_that_does_not_split_is_refused():
    assert distributed.per_rank_batch(24, 8) == 3
    with pytest.raises(PeftbenchError, match="multiple of data_parallel"):
        distributed.per_rank_batch(10, 4)


@pytest.mark.slow
def test_a_suite_trial_trains_data_parallel_over_two_processes(tmp_path, monkeypatch):
    import json

    import yaml

    from peftbench.cli import main

    monkeypatch.chdir(tmp_path)
    suite = {"name": "ddp", "backbone": {"config": "tiny", "overrides": {k: list(v) if isinstance(v, tuple) else v
                                                                          for k, v in MICRO.items()}},
             "datasets": [{"name": "synthetic", "domain": "target", "root": "data/tgt",
                           "scenes": {"train": 4, "val": 1}, "points_per_m2": 15}],
             "methods": [{"name": "gem", "settings": {"rank": 2}}], "seeds": [0],
             "train": {"epochs": 2, "batch_size": 4, "grid_size": 0.1, "data_parallel": 2}}
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(suite))
    assert main(["train", "ddp.yaml", "--out", "out"]) == 0
    result = json.loads(next((tmp_path / "out").glob("*/result.json")).read_text())
    assert result["status"] == "FINISHED" and 0 <= result["metrics"]["test/mIoU"] <= 1
    history = (tmp_path / "out" / "gem_synthetic-target_full_s0" / "history.jsonl").read_text().splitlines()
    assert len(history) == 2  # rank 0 alone records: one line per epoch, not one per rank


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_any_trial(tmp_path):
    from peftbench.suite import parse_suite

    raw = {"name": "x", "datasets": [{"name": "synthetic", "root": str(tmp_path)}], "methods": ["linear"],
           "train": {"batch_size": 3, "data_parallel": 2}}
    with pytest.raises(PeftbenchError, match="multiple of data_parallel"):
        parse_suite(raw, "x.yaml")
    raw["train"]["batch_size"] = 4
    raw["resources"] = {"gpus_per_trial": 1}
    with pytest.raises(PeftbenchError, match="gpus_per_trial"):
        parse_suite(raw, "x.yaml")


def test_leaving_releases_the_ddp_reducers_before_the_process_group():
    """A reducer that outlives its gloo group holds the group's last reference, and the group's
    destructor then deadlocks on the GIL (a rank hung in 5 of 46 runs of the two tests above, the DDP
    model still alive at leave); leave() releases every reducer wrap() made first."""
    import torch.distributed as dist

    world = distributed.join(0, 1, distributed.free_port(), timeout_s=30)
    try:
        model = torch.nn.Linear(4, 2)
        ddp = distributed.wrap(model, world)
        ddp(torch.randn(3, 4)).sum().backward()
        assert world.wrappers == [ddp] and "reducer" in ddp.__dict__
    finally:
        distributed.leave(world)
    assert "reducer" not in ddp.__dict__ and "logger" not in ddp.__dict__
    assert world.wrappers == [] and not dist.is_initialized()
