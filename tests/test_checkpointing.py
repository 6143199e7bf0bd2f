"""Exact resume: a trainer stopped after epoch 2 of 4 and resumed from its checkpoint ends as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from peftbench.backbone import backbone_config
from peftbench.errors import PeftbenchError
from peftbench.model import Segmentor
from peftbench.registry import build_method
from peftbench.train import checkpointing
from peftbench.train.config import TrainConfig
from peftbench.train.trainer import Trainer
from tests.conftest import MICRO, random_scene_batch

CONFIG = TrainConfig(epochs=4, batch_size=2, lr=0.01, lovasz_weight=0.5)


def _trainer(init_seed: int) -> Trainer:
    torch.manual_seed(init_seed)
    model = Segmentor(backbone_config("tiny", **MICRO), 5)
    method = build_method("gem", {"rank": 2})
    method.apply(model)
    return Trainer(model, method, CONFIG, torch.device("cpu"), 5, seed=0)


def _batches(epoch: int) -> list[dict]:
    """Two steps per epoch, drawn from (epoch) only, as the trial's loaders draw from (seed, epoch)."""
    return [random_scene_batch(seed=10 * epoch + i) for i in range(2)]


VAL = [random_scene_batch(seed=999)]


class Killed(Exception):
    pass


def test_stopped_after_epoch_two_resumes_to_the_uninterrupted_result(tmp_path):
    whole = _trainer(0)
    whole.fit(_batches, 2, VAL)

    path = tmp_path / "trainer.pt"
    first = _trainer(0)

    def save_then_die(epoch: int, metrics: dict) -> None:
        checkpointing.save_checkpoint(path, checkpointing.trainer_state(first))
        if epoch + 1 == 2:
            torch.rand(7)  # RNG drawn after the checkpoint (the forward shuffles orders): the resume must not see it
            raise Killed

    with pytest.raises(Killed):
        first.fit(_batches, 2, VAL, on_epoch=save_then_die)

    resumed = _trainer(0)  # the frozen backbone as a trial rebuilds it (from its checkpoint file) ...
    with torch.no_grad():
        for p in resumed.model.parameters():
            if p.requires_grad:
                p.add_(1.0)  # ... and other trainable weights: those must come from the file
    torch.manual_seed(123)  # and another RNG state
    checkpointing.load_trainer_state(resumed, checkpointing.load_checkpoint(path), 2)
    assert resumed.epoch == 2
    history = resumed.fit(_batches, 2, VAL)
    assert [h["train/loss"] for h in history] == [h["train/loss"] for h in whole.history]
    assert [h["val/mIoU"] for h in history] == [h["val/mIoU"] for h in whole.history]
    for name, value in whole.best.weights.items():
        assert torch.equal(resumed.best.weights[name], value), name
    for (name, p), (_, q) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        if p.requires_grad:
            assert torch.equal(p, q), name
    assert resumed.best.epoch == whole.best.epoch
    assert resumed.scheduler.get_last_lr() == whole.scheduler.get_last_lr()
    # Not trivially equal: the trainer resumed from epoch 2 differs from a fresh one of seed 1.
    fresh = _trainer(1)
    fresh.fit(_batches, 2, VAL)
    assert fresh.history[-1]["train/loss"] != whole.history[-1]["train/loss"]


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"format": "something else"}, path)
    with pytest.raises(PeftbenchError, match="not a peftbench trainer checkpoint"):
        checkpointing.load_trainer_state(_trainer(0), checkpointing.load_checkpoint(path), 2)
    (tmp_path / "broken.pt").write_bytes(b"not a zip")
    with pytest.raises(PeftbenchError, match="cannot read the trainer checkpoint"):
        checkpointing.load_checkpoint(tmp_path / "broken.pt")
