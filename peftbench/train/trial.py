"""One trial from a resolved spec: build, (load,) attach, fit, test, record. Also the pretraining
stage, which is a full fine-tuning trial on the source domain that writes a Sonata checkpoint."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peftbench.backbone import backbone_config
from peftbench.backbone.checkpoint import load_backbone_state, read_checkpoint, save_sonata_checkpoint
from peftbench.backbone.compiled import compile_blocks
from peftbench.backbone import gather_conv, sparse_conv
from peftbench.backbone.sparse_conv import resolve_backend, set_default_backend
from peftbench.data.collate import collate_points
from peftbench.data.prefetch import EpochBatches
from peftbench.data.sources import (batches, build_split, build_test_set, build_train_set, dataset_kind,
                                   prepare_dataset, resolve_file)
from peftbench.errors import PeftbenchError
from peftbench.method import count_parameters, method_state_bytes
from peftbench.model import Segmentor
from peftbench.registry import build_method, discover
from peftbench.schema import build
from peftbench.train import checkpointing, distributed
from peftbench.train.config import TrainConfig
from peftbench.train.efficiency import PeakMemory
from peftbench.train.schedule import describe, schedule
from peftbench.train.trainer import Trainer
from peftbench.train.voting import evaluate_voting

log = logging.getLogger("peftbench")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(prefer_cuda: bool = True) -> torch.device:
    return torch.device("cuda" if prefer_cuda and torch.cuda.is_available() else "cpu")


def build_model(spec: dict[str, Any], num_classes: int) -> Segmentor:
    """Backbone from its named config (or the checkpoint's own config), strict checkpoint load."""
    bb = spec["backbone"]
    checkpoint, overrides = bb.get("checkpoint"), bb.get("overrides", {})
    state, fmt, config = None, "none", None
    if checkpoint:
        checkpoint = str(resolve_file(checkpoint, "backbone.checkpoint"))  # ${VAR} allowed
        ckpt_config, state, fmt = read_checkpoint(checkpoint)
        if bb["config"] == "checkpoint":  # build exactly what the file describes (Sonata format)
            if ckpt_config is None:
                raise PeftbenchError(f"{checkpoint} ({fmt}) carries no config; name one in backbone.config")
            config = {**ckpt_config, **overrides}
    if config is None:
        config = backbone_config(bb["config"], **overrides)
    model = Segmentor(config, num_classes)
    if state is not None:
        load_backbone_state(model.backbone, state, strict=bb.get("strict", True), source=str(checkpoint), fmt=fmt,
                            drop_decoder=bb.get("drop_decoder", False))
    return model


def run_trial(spec: dict[str, Any], recorder: Any,
              report: Callable[[dict[str, float], dict | None], None] | None = None,
              progress: Callable[[str], None] | None = None, world: distributed.World | None = None,
              resume: dict[str, Any] | None = None, checkpoint_every: int | None = None) -> dict[str, float]:
    """Run one trial and record everything in ``recorder`` (a TrialRun or LocalRecorder).

    ``report(metrics, state)`` after each epoch; ``state`` is a checkpoint
    (``checkpointing.trainer_state`` and ``train_s``) every ``checkpoint_every`` epochs, or at each
    validation when None. ``resume``: such a state to continue from (same spec).
    With ``train.data_parallel`` > 1 this process becomes rank 0 of the trial's data-parallel
    group (``world``); the other ranks train on their slices and return ``{}``.
    """
    discover(spec.get("methods_dir", []))
    cfg: TrainConfig = build(TrainConfig, spec["train"], "train")
    if world is None and cfg.data_parallel > 1:
        return _run_data_parallel(spec, recorder, report, progress, cfg.data_parallel, resume, checkpoint_every)
    seed = int(spec["seed"])
    seed_everything(seed)
    device = world.device if world else pick_device()
    set_default_backend(spec["backbone"].get("conv_backend", "auto"))
    dataset = spec["dataset"]
    prepare_dataset(dataset)
    classes = dataset_kind(dataset["name"]).classes
    train_set, split_record = build_train_set(dataset, spec.get("split", "full"), cfg.grid_size, cfg.point_max,
                                              seed, cfg.augment)
    val_set = build_split(dataset, dataset["val_split"], False, cfg.grid_size, cfg.point_max, seed)
    val_loader = batches(val_set, cfg.val_batch_size, False, seed, 0, False, cfg.num_workers)

    is_pretrain = spec["kind"] == "pretrain"
    model = build_model(spec, len(classes))
    method = build_method("full" if is_pretrain else spec["method"]["name"], spec.get("method", {}).get("settings"))
    method.apply(model)
    if cfg.compile:
        compile_blocks(model)
    trainable, total = count_parameters(model)
    recorder.log_metrics({"params/trainable": trainable, "params/total": total,
                          "params/trainable_pct": 100.0 * trainable / total})
    requested = spec["backbone"].get("conv_backend", "auto")
    backend = resolve_backend(requested, device)
    if requested == "auto" and device.type == "cuda":  # the rules are part of what ran
        backend = (("gather (Triton kernels) on every level under half autocast, else " if gather_conv.kernels_available()
                    else "") + (f"spconv, gather at <= {sparse_conv.GATHER_MAX_SITES} sites" if backend == "spconv"
                                else backend))
    recorder.log_dict({**spec, "resolved": {"device": str(device), "conv_backend": backend,
                                            "classes": list(classes),
                                            "split": {k: split_record[k] for k in ("split", "source", "hash")}}},
                       "config.json")
    recorder.log_dict(split_record, "split.json")
    record_split_source(split_record, recorder, progress)
    recorder.log_metrics({"split/train_scenes": split_record["num_scenes"],
                          **({"split/labelled_points": split_record["labelled_points"]}
                             if "labelled_points" in split_record else {})})

    plan = schedule(len(train_set), cfg)
    recorder.log_metrics({f"schedule/{k}": v for k, v in plan.items()})
    if progress:
        progress(f"schedule: {describe(plan)}")
    peak = PeakMemory(device)
    trainer = Trainer(model, method, cfg, device, len(classes), seed)
    follower = world is not None and not world.is_leader
    if world is not None:
        trainer.train_forward = distributed.wrap(model, world)
    trained_before = 0.0  # seconds of training before the checkpoint resumed from
    if resume is not None:
        checkpointing.load_trainer_state(trainer, resume, plan["steps_per_epoch"])
        trained_before = float(resume.get("train_s", 0.0))
        if progress:
            progress(f"resumed from the checkpoint of epoch {trainer.epoch}")

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        recorder.log_epoch(epoch + 1, metrics)  # step = epochs completed, as the progress lines count
        if report:
            due = "val/mIoU" in metrics if checkpoint_every is None else (epoch + 1) % checkpoint_every == 0
            state = None
            if due:  # taken here, between epochs: the next epoch's batches and RNG start from it
                state = {**checkpointing.trainer_state(trainer),
                         "train_s": trained_before + time.perf_counter() - start}
            report({**metrics, "epoch": epoch + 1}, state)

    start = time.perf_counter()
    # The last partial batch is dropped (Pointcept's drop_last), unless it is the only one: fewer
    # training scenes than a batch (one scene of `scenes-25` of 4) still make the one step planned.
    drop_last = len(train_set) >= cfg.batch_size

    # Micro-batches of batch_size / accumulate scenes; Mix3D merges pairs within each, as Pointcept per GPU.
    # Under data parallel each rank takes its slice of every micro-batch.
    def micro_batches(epoch: int):
        loader = batches(train_set, cfg.micro_batch, True, seed, epoch, drop_last, cfg.num_workers, cfg.mix_prob)
        return distributed.shard(loader, world) if world is not None else loader

    train_batches = EpochBatches(micro_batches, plan["steps_per_epoch"] * cfg.accumulate, cfg.epochs, device,
                                 cfg.num_workers > 0, per_step=cfg.accumulate)
    trainer.fit(train_batches, plan["steps_per_epoch"], None if follower else val_loader, on_epoch, progress)
    train_s = trained_before + time.perf_counter() - start
    if follower:  # rank 0 tests and records
        return {}
    tested_epoch = trainer.restore_best() if cfg.test_checkpoint == "best" else trainer.epoch
    if progress:
        progress(f"testing the weights of epoch {tested_epoch} ({cfg.test_checkpoint} of {trainer.epoch})")
    if cfg.test_protocol == "voting":  # Sonata's 13-augmentation fragment voting on every point
        scores, confusion = evaluate_voting(model, build_test_set(dataset), len(classes), grid_size=cfg.grid_size,
                                            prevoxel=dataset_kind(dataset["name"]).recipe.test_prevoxel,
                                            device=device, seed=seed, amp=cfg.amp, amp_dtype=trainer.amp_dtype,
                                            fragments_per_pass=cfg.test_fragments_per_pass,
                                            progress=progress)
    elif cfg.test_checkpoint == "best" and trainer.best:  # the fast single pass: that epoch's validation
        scores, confusion = trainer.best.scores, trainer.best.confusion
    else:  # the last epoch's validation (deterministic), not run twice
        scores, confusion = trainer.last_evaluation or trainer.evaluate(val_loader)
    final = {"test/mIoU": scores["mIoU"], "test/mAcc": scores["mAcc"], "test/allAcc": scores["allAcc"],
             **{f"test/iou/{name}": iou for name, iou in zip(classes, scores["iou"])},
             "test/checkpoint_epoch": tested_epoch, **trainer.efficiency(), "eff/peak_mem_mb": peak.megabytes(),
             "eff/latency_ms": trainer.latency_ms(collate_points([val_set[0]])), "time/train_s": train_s}  # one scene
    recorder.log_metrics(final)
    recorder.log_dict({"classes": list(classes), "matrix": confusion.tolist()}, "confusion_matrix.json")
    if is_pretrain:
        save_sonata_checkpoint(spec["checkpoint"], model.backbone_config, model.backbone.state_dict())
    else:  # the weights that were tested (best or last)
        recorder.log_bytes(method_state_bytes(model), "method_weights.pt")
    return final


def record_split_source(record: dict[str, Any], recorder: Any, progress: Callable[[str], None] | None) -> None:
    """Tag the run ``peftbench.split_source`` = ``seeded`` (no official split file: a seeded subset
    was drawn, and the console says so) or ``official`` (the benchmark's file, or every scene)."""
    seeded = record.get("source") == "seeded subset"
    recorder.set_tags({"peftbench.split_source": "seeded" if seeded else "official"})
    if seeded:
        message = (f"split {record['split']}: no official split file under the dataset's tasks/ folder; "
                   f"training on a seeded subset (split seed {record['split_seed']}), not the benchmark's split")
        (progress or log.warning)(message)


class _Discard:
    """The recorder of a data-parallel follower: rank 0 records the trial."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _run_data_parallel(spec: dict[str, Any], recorder: Any, report: Callable | None, progress: Callable | None,
                       size: int, resume: dict[str, Any] | None, checkpoint_every: int | None) -> dict[str, float]:
    port = distributed.free_port()
    followers = distributed.spawn_followers(_follow, size, port, spec, resume)  # every rank resumes the same state
    world = None
    try:
        world = distributed.join(0, size, port)
        final = run_trial(spec, recorder, report, progress, world, resume, checkpoint_every)
        distributed.wait_followers(followers)
        return final
    except BaseException:
        distributed.stop_followers(followers)  # they would wait for rank 0 until the group times out
        raise
    finally:
        distributed.leave(world)


def _follow(rank: int, size: int, port: int, spec: dict[str, Any], resume: dict[str, Any] | None) -> None:
    world = distributed.join(rank, size, port)
    try:
        run_trial(spec, _Discard(), world=world, resume=resume)
    finally:
        distributed.leave(world)


def ensure_pretrained(spec: dict[str, Any], recorder_factory: Callable[[], Any],
                      progress: Callable[[str], None] | None = None) -> Path:
    """Run the pretraining stage unless its checkpoint (keyed by config hash) is cached."""
    path = Path(spec["checkpoint"])
    if path.is_file():
        if progress:
            progress(f"pretrained backbone cached: {path}")
        return path
    with recorder_factory() as recorder:
        run_trial(spec, recorder, progress=progress)
    return path
