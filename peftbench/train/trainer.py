"""Fit and evaluate one model: AdamW + OneCycle, CE (+ Lovász), clipping, AMP on CUDA."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from peftbench.method import Method
from peftbench.train.config import TrainConfig
from peftbench.train.losses import segmentation_loss
from peftbench.train.metrics import confusion_matrix, scores_from_confusion
from peftbench.train.optim import build_optimizer, parameter_groups

_MODEL_KEYS = ("coord", "grid_coord", "feat", "offset", "grid_size")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in _MODEL_KEYS if k in batch}


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
        self.step_times: list[float] = []
        self.points_seen = 0
        self.last_evaluation: tuple[dict[str, Any], torch.Tensor] | None = None

    def fit(self, train_batches: Callable[[int], Iterable[dict]], steps_per_epoch: int,
            val_loader: Iterable[dict] | None = None,
            on_epoch: Callable[[int, dict[str, float]], None] | None = None,
            progress: Callable[[str], None] | None = None) -> list[dict[str, float]]:
        """Train for ``config.epochs``; ``train_batches(epoch)`` yields that epoch's batches."""
        cfg = self.config
        groups = parameter_groups(self.model, self.method, cfg.lr, cfg.method_lr or cfg.lr, cfg.backbone_lr)
        optimizer, scheduler = build_optimizer(groups, cfg.weight_decay, cfg.epochs * steps_per_epoch,
                                               cfg.pct_start, cfg.div_factor, cfg.final_div_factor)
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        params = [p for g in groups for p in g["params"]]
        history = []
        for epoch in range(cfg.epochs):
            self.model.train()  # as Pointcept: a frozen backbone keeps train mode (drop-path active)
            losses = []
            for step, batch in enumerate(train_batches(epoch)):
                if step >= steps_per_epoch:
                    break
                start = time.perf_counter()
                batch = to_device(batch, self.device)
                with self._autocast():
                    logits = self.train_forward(model_inputs(batch))
                    loss = segmentation_loss(logits, batch["segment"], cfg.lovasz_weight)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scale_before = scaler.get_scale()
                scaler.step(optimizer)
                scaler.update()
                if not self.use_amp or scaler.get_scale() >= scale_before:  # skipped step: no lr step
                    scheduler.step()
                self._synchronize()
                self.step_times.append(time.perf_counter() - start)
                self.points_seen += int(batch["coord"].shape[0])
                losses.append(float(loss.detach()))
            metrics = {"train/loss": sum(losses) / max(len(losses), 1), "lr": optimizer.param_groups[0]["lr"]}
            if val_loader is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                scores, confusion = self.evaluate(val_loader)
                self.last_evaluation = (scores, confusion)  # the final one doubles as the test pass
                metrics.update({f"val/{k}": v for k, v in scores.items() if k != "iou"})
            history.append(metrics)
            if progress:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                progress(f"epoch {epoch + 1}/{cfg.epochs}: {shown}")
            if on_epoch:
                on_epoch(epoch, metrics)
        return history

    @torch.no_grad()
    def evaluate(self, loader: Iterable[dict]) -> tuple[dict[str, Any], torch.Tensor]:
        """Single-pass evaluation on every original point (grid-sampled prediction mapped back)."""
        self.model.eval()
        generator = torch.Generator(device=self.device).manual_seed(self.seed)  # reproducible shuffles
        confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        for batch in loader:
            batch = to_device(batch, self.device)
            with self._autocast():
                pred = self.model(model_inputs(batch), generator).argmax(dim=-1)
            target = batch["segment"]
            if "inverse" in batch and "origin_segment" in batch:
                pred, target = pred[batch["inverse"]], batch["origin_segment"]
            confusion += confusion_matrix(pred, target, self.num_classes)
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
        steady = self.step_times[min(3, len(self.step_times) - 1):] if self.step_times else [float("nan")]
        step = sum(steady) / len(steady)
        total = sum(self.step_times)
        return {"eff/step_time_ms": 1000 * step,
                "eff/points_per_s": self.points_seen / total if total else float("nan")}

    def _autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

