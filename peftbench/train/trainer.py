"""Fit and evaluate one model: AdamW + OneCycle per optimizer step, CE (+ Lovász), clipping, AMP
on CUDA, gradient accumulation, and the best validation state of what trains.

A step's total batch (``train.batch_size`` scenes) arrives as ``train.accumulate`` micro-batches.
Each micro-batch's loss is weighted by its share of the step's labelled points, so the summed
gradient is that of the full batch's mean cross-entropy (exactly, in fp32). The Lovász term is a
whole-batch quantity (a sort over all points of a class) that does not decompose over
micro-batches: with accumulation each micro-batch contributes its own Lovász loss with the same
weight, which is close to, but not the same as, the full batch's. ``train.micro_batches_per_pass``
runs several micro-batches in one forward/backward (fewer, larger passes: a large GPU spends less
of the step waiting for the host) with each micro-batch's loss still its own.

Everything ``fit`` carries from step to step (optimizer, scheduler, scaler, epochs completed,
best validation state, history) is an attribute, so a checkpoint can save and restore it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from peftbench.data import concat_batches
from peftbench.data.prefetch import prefetch_to_device
from peftbench.errors import PeftbenchError
from peftbench.method import Method, load_method_state_dict, method_state_dict
from peftbench.progress import report_progress
from peftbench.train.config import TrainConfig
from peftbench.train.guard import DivergenceGuard
from peftbench.train.losses import segmentation_loss
from peftbench.train.memory_split import SplitOnOutOfMemory
from peftbench.train.metrics import confusion_matrix, scores_from_confusion
from peftbench.train.optim import build_optimizer, parameter_groups
from peftbench.train.precision import store_frozen_weights

_MODEL_KEYS = ("coord", "grid_coord", "feat", "offset", "grid_size")
IGNORE_INDEX = -1


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in _MODEL_KEYS if k in batch}


@dataclasses.dataclass
class BestState:
    """The best validation so far: its epoch (counted from 1), scores, confusion and a CPU copy of
    the trainable parameters (method and head: small, except for full fine-tuning)."""

    epoch: int
    scores: dict[str, Any]
    confusion: torch.Tensor
    weights: dict[str, torch.Tensor]


class Trainer:
    def __init__(self, model: nn.Module, method: Method, config: TrainConfig, device: torch.device,
                 num_classes: int, seed: int = 0) -> None:
        self.model = model.to(device)
        self.train_forward: nn.Module = self.model  # the training forward; DDP-wrapped under data parallel
        self.method = method
        self.config = config
        self.device = device
        self.num_classes = num_classes
        self.seed = seed
        self.use_amp = config.amp and device.type == "cuda"
        self.amp_dtype = getattr(torch, config.amp_dtype)
        if self.use_amp:
            store_frozen_weights(self.model, self.amp_dtype)  # every forward of the trial runs under autocast
        self.step_times: list[float] = []
        self.points_seen = 0
        self.last_evaluation: tuple[dict[str, Any], torch.Tensor] | None = None
        # Training state (checkpointable): built by ``prepare``, advanced by ``fit``.
        self.groups: list[dict] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.epoch = 0                       # epochs completed
        self.best: BestState | None = None
        self.history: list[dict[str, float]] = []
        self.guard = DivergenceGuard(config)
        self.last_step_skipped = False       # AMP skipped the last optimizer step (non-finite gradients)

    def prepare(self, steps_per_epoch: int) -> None:
        """Optimizer groups, AdamW, OneCycle over ``epochs * steps_per_epoch`` optimizer steps, and
        a GradScaler (float16 autocast only: bfloat16 has float32's range). Idempotent."""
        if self.optimizer is not None:
            return
        cfg = self.config
        self.groups = parameter_groups(self.model, self.method, cfg.lr, cfg.method_lr or cfg.lr, cfg.backbone_lr,
                                       cfg.lr_groups)
        self.optimizer, self.scheduler = build_optimizer(self.groups, cfg.weight_decay, cfg.epochs * steps_per_epoch,
                                                         cfg.pct_start, cfg.div_factor, cfg.final_div_factor)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    def fit(self, train_batches: Callable[[int], Iterable[dict]], steps_per_epoch: int,
            val_loader: Iterable[dict] | None = None,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None,
            progress: Callable[[str], None] | None = None) -> list[dict[str, float]]:
        """Train from epoch ``self.epoch`` to ``config.epochs``; ``train_batches(epoch)`` yields that
        epoch's micro-batches (``config.micro_batch`` scenes each), ``config.accumulate`` per step."""
        cfg = self.config
        self.prepare(steps_per_epoch)
        total_steps = cfg.epochs * steps_per_epoch
        report_progress(progress, "train", self.epoch * steps_per_epoch, total_steps, lines=False,
                        epoch=f"{self.epoch + 1}/{cfg.epochs}")  # loaders warm up
        for epoch in range(self.epoch, cfg.epochs):
            self.model.train()  # as Pointcept: a frozen backbone keeps train mode (drop-path active)
            micro_batches = iter(train_batches(epoch))
            losses = []
            for step in range(steps_per_epoch):
                step_batches = list(itertools.islice(micro_batches, cfg.accumulate))
                if not step_batches:
                    if step == 0:  # a FINISHED run must have trained
                        raise RuntimeError(f"epoch {epoch + 1} gave no training batch (planned {steps_per_epoch} steps)")
                    break
                loss = self.train_step(step_batches)
                if loss is not None:
                    losses.append(loss)
                    self.guard.check(loss, epoch, step, skipped=self.last_step_skipped)
                    report_progress(progress, "train", epoch * steps_per_epoch + step + 1, total_steps, lines=False,
                                    epoch=f"{epoch + 1}/{cfg.epochs}", loss=loss)
            metrics = {"train/loss": sum(losses) / max(len(losses), 1), "lr": self.optimizer.param_groups[0]["lr"]}
            if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                scores, confusion = self.evaluate(val_loader)
                self.last_evaluation = (scores, confusion)  # the final one doubles as the test pass
                self._keep_if_best(epoch + 1, scores, confusion)
                metrics.update({f"val/{k}": v for k, v in scores.items() if k != "iou"})
            self.history.append(metrics)
            self.epoch = epoch + 1
            if progress:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                progress(f"epoch {epoch + 1}/{cfg.epochs}: {shown}")
            if on_epoch:
                on_epoch(epoch, metrics)
        return self.history

    def train_step(self, micro_batches: list[dict]) -> float | None:
        """One optimizer step over the micro-batches of one total batch; returns the batch's loss,
        or None when no point of the batch is labelled (no step: nothing to learn from)."""
        cfg = self.config
        start = time.perf_counter()
        labelled = [int((b["segment"] != IGNORE_INDEX).sum()) for b in micro_batches]
        total = sum(labelled)
        if not total:
            return None
        self.optimizer.zero_grad(set_to_none=True)
        batch_loss = torch.zeros((), device=self.device)  # summed on the device: no wait per micro-batch
        # a crop without labelled points (limited annotation) has no loss to add: left out
        labelled_batches = [(b, count) for b, count in zip(micro_batches, labelled) if count]
        for first in range(0, len(labelled_batches), cfg.micro_batches_per_pass):
            group = labelled_batches[first:first + cfg.micro_batches_per_pass]
            batch = to_device(concat_batches([b for b, _ in group]), self.device)
            last = first + cfg.micro_batches_per_pass >= len(labelled_batches)
            try:
                with self._gradients_kept_local(not last):
                    with self._autocast():
                        logits = self.train_forward(model_inputs(batch))
                        loss = self._pass_loss(logits, batch["segment"], group, total)
                    self.scaler.scale(loss).backward()
            except torch.cuda.OutOfMemoryError as err:
                raise PeftbenchError(
                    f"out of GPU memory in a training pass of {len(group)} micro-batch(es), "
                    f"{int(batch['coord'].shape[0])} points: lower train.micro_batches_per_pass (now "
                    f"{cfg.micro_batches_per_pass}), else raise train.accumulate or lower train.point_max") from err
            batch_loss += loss.detach().float()
            self.points_seen += int(batch["coord"].shape[0])
        self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in self.groups for p in g["params"]], cfg.grad_clip)
        scale_before = self.scaler.get_scale()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.last_step_skipped = self.scaler.is_enabled() and self.scaler.get_scale() < scale_before
        if not self.last_step_skipped:  # a skipped step takes no lr step either
            self.scheduler.step()
        self._synchronize()
        self.step_times.append(time.perf_counter() - start)
        return float(batch_loss)

    def _gradients_kept_local(self, local: bool) -> contextlib.AbstractContextManager:
        """Under data parallel, every pass but a step's last accumulates its gradients locally: the
        ranks average once a step (the same sum), and a rank whose crops left a micro-batch without
        labels (fewer passes) still meets the others at that one exchange instead of hanging them."""
        no_sync = getattr(self.train_forward, "no_sync", None)
        return no_sync() if local and no_sync is not None else contextlib.nullcontext()

    def _pass_loss(self, logits: torch.Tensor, segment: torch.Tensor, group: list[tuple[dict, int]],
                   total: int) -> torch.Tensor:
        """Each micro-batch's loss on its own points, weighted by its share of the step's labelled
        points: the same as one pass per micro-batch (Lovász is per micro-batch either way)."""
        sizes = [len(batch["coord"]) for batch, _ in group]
        return sum(segmentation_loss(part, target, self.config.lovasz_weight) * (count / total)
                   for part, target, (_, count) in zip(logits.split(sizes), segment.split(sizes), group))

    def _keep_if_best(self, epoch: int, scores: dict[str, Any], confusion: torch.Tensor) -> None:
        if self.best is None or scores["mIoU"] > self.best.scores["mIoU"]:
            self.best = BestState(epoch, scores, confusion, method_state_dict(self.model))

    def restore_best(self) -> int:
        """Load the best validation state's trainable weights into the model; returns its epoch."""
        if self.best is None:
            return self.epoch
        load_method_state_dict(self.model, self.best.weights)
        return self.best.epoch

    @torch.no_grad()
    def evaluate(self, loader: Iterable[dict]) -> tuple[dict[str, Any], torch.Tensor]:
        """Single-pass evaluation on every original point (grid-sampled prediction mapped back)."""
        self.model.eval()
        generator = torch.Generator(device=self.device).manual_seed(self.seed)  # reproducible shuffles
        confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=self.device)

        def forward(batch: dict) -> torch.Tensor:
            with self._autocast():
                return self.model(model_inputs(batch), generator).argmax(dim=-1)

        validate = SplitOnOutOfMemory(forward, "validation scene")  # val_batch_size scenes, halved if they do not fit
        for batch in prefetch_to_device(loader, self.device):  # the next scenes pinned and copied meanwhile
            for part, pred in validate(batch):
                target = part["segment"]
                if "inverse" in part and "origin_segment" in part:
                    pred, target = pred[part["inverse"]], part["origin_segment"]
                confusion += confusion_matrix(pred, target, self.num_classes)
        confusion = confusion.cpu()
        return scores_from_confusion(confusion), confusion

    @torch.no_grad()
    def latency_ms(self, batch: dict, repeats: int = 3) -> float:
        """Inference time of one batch (after a warm-up pass)."""
        self.model.eval()
        batch = to_device(batch, self.device)
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            with self._autocast():
                self.model(model_inputs(batch))
            self._synchronize()
            times.append(time.perf_counter() - start)
        return 1000 * sorted(times[1:])[len(times[1:]) // 2]

    def efficiency(self) -> dict[str, float]:
        """Time per optimizer step (all its micro-batches) after the 3rd, and points per second."""
        steady = self.step_times[min(3, len(self.step_times) - 1):] if self.step_times else [float("nan")]
        step = sum(steady) / len(steady)
        total = sum(self.step_times)
        return {"eff/step_time_ms": 1000 * step,
                "eff/points_per_s": self.points_seen / total if total else float("nan")}

    def _autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
