"""The training protocol: total batch by gradient accumulation, best-validation state, settings."""

from __future__ import annotations

import warnings

import pytest
import torch

from peftbench.backbone import backbone_config
from peftbench.errors import PeftbenchError
from peftbench.model import Segmentor
from peftbench.registry import build_method
from peftbench.train.config import TrainConfig
from peftbench.train.trainer import Trainer
from tests.conftest import MICRO, random_scene_batch


def _trainer(config: TrainConfig, method: str = "gem") -> Trainer:
    torch.manual_seed(0)
    # No order shuffling: a forward of one scene then equals its part of a two-scene forward.
    model = Segmentor(backbone_config("tiny", **{**MICRO, "shuffle_orders": False}), 5)
    build_method(method, {"rank": 4} if method == "gem" else None).apply(model)
    for name, p in model.named_parameters():
        if "gem_" in name and name.endswith("up.weight"):
            torch.nn.init.normal_(p, std=0.05)
    return Trainer(model, build_method(method), config, torch.device("cpu"), 5)


def _scenes_with_ignored_points() -> tuple[dict, dict, dict]:
    """One batch of two scenes of unequal size, some points unlabelled, and its two halves."""
    both = random_scene_batch(sizes=(300, 220), seed=3)
    both["segment"][::7] = -1
    n0 = int(both["offset"][0])
    first = {**both, **{k: both[k][:n0] for k in ("coord", "grid_coord", "feat", "segment")},
             "offset": both["offset"][:1]}
    second = {**both, **{k: both[k][n0:] for k in ("coord", "grid_coord", "feat", "segment")},
              "offset": both["offset"][1:] - n0}
    return both, first, second


def _assert_same_trainable(a: Trainer, b: Trainer) -> None:
    """Every trainable parameter of ``a`` equals ``b``'s (and there are some)."""
    params = dict(b.model.named_parameters())
    moved = 0
    for name, p in a.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(params[name], p, rtol=1e-5, atol=1e-6, msg=name)
            moved += 1
    assert moved


@pytest.mark.parametrize("method", ["gem", "full"])
def test_accumulating_two_micro_batches_equals_one_batch_of_two(method):
    both, first, second = _scenes_with_ignored_points()
    settings = dict(epochs=1, batch_size=2, lovasz_weight=0.0, lr=0.01, backbone_lr=0.01, lr_groups="role")
    whole = _trainer(TrainConfig(**settings, accumulate=1), method)
    split = _trainer(TrainConfig(**settings, accumulate=2), method)
    whole.fit(lambda epoch: [both], steps_per_epoch=1)
    split.fit(lambda epoch: [first, second], steps_per_epoch=1)
    assert len(whole.step_times) == len(split.step_times) == 1  # one optimizer (and OneCycle) step each
    _assert_same_trainable(whole, split)
    assert split.scheduler.last_epoch == whole.scheduler.last_epoch == 1


@pytest.mark.parametrize("method", ["gem", "full"])
def test_micro_batches_in_one_pass_equal_one_pass_each(method):
    """Two micro-batches per forward/backward, each with its own loss (Lovász included): the same step
    as one pass per micro-batch; an unlabelled micro-batch is left out of its pass."""
    micro = [random_scene_batch(sizes=sizes, seed=seed) for seed, sizes in enumerate([(200, 90), (160,), (120,), (180, 70)])]
    micro[2]["segment"][:] = -1
    micro[3]["segment"][::5] = -1
    settings = dict(epochs=1, batch_size=8, accumulate=4, lovasz_weight=1.0, lr=0.01, backbone_lr=0.01, lr_groups="role")
    one_each = _trainer(TrainConfig(**settings, micro_batches_per_pass=1), method)
    paired = _trainer(TrainConfig(**settings, micro_batches_per_pass=2), method)
    one_each.prepare(1)
    paired.prepare(1)
    loss_each = one_each.train_step(micro)
    loss_paired = paired.train_step(micro)
    assert loss_paired == pytest.approx(loss_each, rel=1e-5)
    assert one_each.points_seen == paired.points_seen == sum(len(b["coord"]) for i, b in enumerate(micro) if i != 2)
    _assert_same_trainable(one_each, paired)


def test_micro_batches_per_pass_must_divide_accumulate():
    with pytest.raises(PeftbenchError, match="micro_batches_per_pass .* must divide"):
        TrainConfig(batch_size=24, accumulate=8, micro_batches_per_pass=3)
    with pytest.raises(PeftbenchError, match="micro_batches_per_pass must be an integer >= 1"):
        TrainConfig(batch_size=24, accumulate=8, micro_batches_per_pass=0)


def _validation_samples() -> list[dict]:
    """Three validation scenes of unequal size, several original points per voxel."""
    import numpy as np

    from peftbench.data.transforms import sonata_val_transform

    def scene(seed: int, n: int) -> dict:
        rng = np.random.default_rng(seed)
        return {"coord": (rng.random((n, 3)) * [1.2, 1.0, 0.6]).astype(np.float32),
                "color": rng.integers(0, 256, (n, 3)).astype(np.uint8),
                "normal": rng.normal(size=(n, 3)).astype(np.float32), "segment": rng.integers(-1, 5, n)}

    return [sonata_val_transform(0.1)(scene(seed, n), np.random.default_rng(seed))
            for seed, n in enumerate([900, 400, 700])]


def test_validation_in_batches_scores_as_one_scene_at_a_time():
    """``train.val_batch_size``: scenes of unequal size in one forward, each mapped back to its own
    original points (``inverse`` shifted per scene): the same confusion as one scene per forward."""
    from peftbench.data.collate import collate_points

    samples = _validation_samples()
    assert all(len(s["inverse"]) > len(s["coord"]) for s in samples)  # several points per voxel
    trainer = _trainer(TrainConfig(epochs=1, val_batch_size=2))
    _, one_each = trainer.evaluate([collate_points([s]) for s in samples])
    _, batched = trainer.evaluate([collate_points(samples[:2]), collate_points(samples[2:])])
    assert int(one_each.sum()) == sum(int((s["origin_segment"] >= 0).sum()) for s in samples)
    assert torch.equal(batched, one_each)
    with pytest.raises(PeftbenchError, match="val_batch_size must be an integer >= 1"):
        TrainConfig(val_batch_size=0)


def test_out_of_gpu_memory_in_a_pass_says_what_to_lower(monkeypatch):
    trainer = _trainer(TrainConfig(epochs=1, batch_size=4, accumulate=2, micro_batches_per_pass=2))
    trainer.prepare(1)

    def out_of_memory(inputs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    monkeypatch.setattr(trainer, "train_forward", out_of_memory)
    micro = [random_scene_batch(sizes=(120,), seed=seed) for seed in range(2)]
    with pytest.raises(PeftbenchError, match=r"pass of 2 micro-batch\(es\), 240 points: lower "
                                             r"train.micro_batches_per_pass \(now 2\)"):
        trainer.train_step(micro)


def test_confusion_matrix_counts_pairs_and_drops_ignored_points():
    from peftbench.train.metrics import confusion_matrix

    target = torch.tensor([0, 1, 1, 2, -1, 2, 2])
    pred = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    assert confusion_matrix(pred, target, 3).tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 2]]


def test_validation_out_of_gpu_memory_runs_in_halves_with_the_same_scores():
    """Three scenes in one forward on a model that fits one (a stand-in out-of-memory): a warning,
    then the confusion of one scene a forward; one scene that does not fit names what to do."""
    from peftbench.data.collate import collate_points

    samples = _validation_samples()
    trainer = _trainer(TrainConfig(epochs=1, val_batch_size=3))
    _, one_each = trainer.evaluate([collate_points([s]) for s in samples])
    forward, calls = trainer.model.forward, []

    def fits_one(data, generator=None):
        calls.append(len(data["offset"]))
        if len(data["offset"]) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return forward(data, generator)
    trainer.model.forward = fits_one
    with pytest.warns(RuntimeWarning, match="out of GPU memory on 3 validation scenes in one forward; going on with 1"):
        _, split = trainer.evaluate([collate_points(samples)])
    assert calls == [3, 1, 1, 1] and torch.equal(split, one_each)
    trainer.model.forward = lambda data, generator=None: fits_one({**data, "offset": data["offset"].repeat(2)})
    with pytest.raises(PeftbenchError, match="out of GPU memory on one validation scene of .* more memory"):
        trainer.evaluate([collate_points(samples[:1])])


def test_accumulation_steps_per_total_batch():
    """Four micro-batches at accumulate 2: two optimizer steps, the schedule counts two."""
    _, first, second = _scenes_with_ignored_points()
    trainer = _trainer(TrainConfig(epochs=1, batch_size=2, accumulate=2, lovasz_weight=0.0))
    trainer.fit(lambda epoch: [first, second, second, first], steps_per_epoch=2)
    assert len(trainer.step_times) == 2 and trainer.scheduler.last_epoch == 2 and trainer.epoch == 1


def test_batch_must_divide_into_micro_batches():
    with pytest.raises(PeftbenchError, match="accumulate .* divides"):
        TrainConfig(batch_size=24, accumulate=5)
    assert TrainConfig(batch_size=24, accumulate=8).micro_batch == 3


@pytest.mark.parametrize("settings, key", [({"amp_dtype": "fp16"}, "amp_dtype"), ({"lr_groups": "paper"}, "lr_groups"),
                                           ({"test_checkpoint": "final"}, "test_checkpoint"),
                                           ({"method_lr": 0.01}, "method_lr")])
def test_bad_protocol_settings_say_how_to_fix(settings, key):
    with pytest.raises(PeftbenchError, match=f"train.{key}"):
        TrainConfig(**settings)


def test_best_validation_state_is_kept_and_restored():
    _, first, second = _scenes_with_ignored_points()
    trainer = _trainer(TrainConfig(epochs=3, batch_size=1, lovasz_weight=0.0, lr=0.05))
    scores = iter([0.2, 0.6, 0.4])
    trainer.evaluate = lambda loader: ({"mIoU": next(scores), "mAcc": 0.0, "allAcc": 0.0, "iou": []},
                                       torch.zeros(5, 5, dtype=torch.long))
    snapshots = {}

    def on_epoch(epoch, metrics):
        snapshots[epoch + 1] = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    trainer.fit(lambda epoch: [first, second], steps_per_epoch=2, val_loader=[None], on_epoch=on_epoch)
    assert trainer.best.epoch == 2 and trainer.best.scores["mIoU"] == 0.6
    last = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any(not torch.equal(last[n], snapshots[2][n]) for n in last)
    assert trainer.restore_best() == 2
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), snapshots[2][name], rtol=0, atol=0)
    # Frozen weights are not part of the kept state (it stays method-sized).
    assert set(trainer.best.weights) == set(last)


def test_fp16_asks_for_a_grad_scaler_bf16_does_not():
    for dtype, scaled in (("float16", True), ("bfloat16", False)):
        trainer = _trainer(TrainConfig(amp_dtype=dtype))
        trainer.use_amp = True  # as on CUDA
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.prepare(1)
        assert trainer.amp_dtype == getattr(torch, dtype)
        if torch.cuda.is_available():
            assert trainer.scaler.is_enabled() == scaled
        else:  # a scaler asked for without CUDA warns and disables itself
            assert any("GradScaler" in str(w.message) for w in caught) == scaled
