"""Optimizer groups by role, not by name keyword.

Pointcept's ``param_dicts=[dict(keyword="block", lr=...)]`` routes every parameter whose name
contains "block" (adapters and LoRA inside blocks too) to the backbone rate. Here each parameter
is classified by what it is: the head, the method's own parameters, or backbone weights.
"""

from __future__ import annotations

import torch
from torch import nn

from peftbench.method import HEAD_PREFIXES, Method


def parameter_groups(model: nn.Module, method: Method, lr: float, method_lr: float,
                     backbone_lr: float) -> list[dict]:
    groups: dict[str, dict] = {
        "head": {"name": "head", "params": [], "lr": lr},
        "method": {"name": "method", "params": [], "lr": method_lr},
        "backbone": {"name": "backbone", "params": [], "lr": backbone_lr},
    }
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        role = "head" if name.startswith(HEAD_PREFIXES) else "method" if method.owns(name) else "backbone"
        groups[role]["params"].append(param)
    return [g for g in groups.values() if g["params"]]


def build_optimizer(groups: list[dict], weight_decay: float, total_steps: int, pct_start: float,
                    div_factor: float, final_div_factor: float):
    """AdamW + per-iteration OneCycle (cosine), as Sonata's recipes."""
    optimizer = torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=max(total_steps, 1), pct_start=pct_start,
        anneal_strategy="cos", div_factor=div_factor, final_div_factor=final_div_factor)
    return optimizer, scheduler
