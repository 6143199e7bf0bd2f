"""Optimizer groups (``train.lr_groups``) and AdamW + OneCycle.

``pointcept`` is the rule of the paper's code base, Pointcept's ``build_optimizer`` with Sonata's
``param_dicts=[dict(keyword="block", lr=backbone_lr)]``: a parameter whose name contains
"block" goes to the backbone rate, everything else to the base rate. Adapters, LoRA and GEM
modules inside blocks therefore train at 2e-4, while the head, the embedding, pooling, unpooling
and GEM's global latents train at 2e-3. ``role`` classifies each parameter by what it is: the
head (and a decoder), the method's own parameters (``method_lr``), or backbone weights.
"""

from __future__ import annotations

import torch
from torch import nn

from peftbench.method import HEAD_PREFIXES, Method

POINTCEPT_KEYWORD = "block"  # Sonata's param_dicts keyword


def parameter_groups(model: nn.Module, method: Method, lr: float, method_lr: float, backbone_lr: float,
                     rule: str = "role") -> list[dict]:
    """Trainable parameters in named groups, each ``{"name", "params", "names", "lr"}``; empty groups
    are dropped. Frozen parameters are left out (Pointcept lists them too, but AdamW skips them)."""
    if rule == "pointcept":
        groups = {"base": {"lr": lr}, "block": {"lr": backbone_lr}}
    else:
        groups = {"head": {"lr": lr}, "method": {"lr": method_lr}, "backbone": {"lr": backbone_lr}}
    for name, group in groups.items():
        group.update(name=name, params=[], names=[])
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if rule == "pointcept":
            key = "block" if POINTCEPT_KEYWORD in name else "base"
        else:
            key = "head" if name.startswith(HEAD_PREFIXES) else "method" if method.owns(name) else "backbone"
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [g for g in groups.values() if g["params"]]


def build_optimizer(groups: list[dict], weight_decay: float, total_steps: int, pct_start: float,
                    div_factor: float, final_div_factor: float):
    """AdamW + per-optimizer-step OneCycle (cosine), as Sonata's recipes.

    On CUDA, AdamW is fused: a few kernels for all parameters instead of ~10 per tensor (GEM has
    ~170), and GradScaler hands it the overflow flag, so an overflowed step is skipped on the device.
    """
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, lr=groups[0]["lr"], weight_decay=weight_decay, fused=on_cuda or None)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=max(total_steps, 1), pct_start=pct_start,
        anneal_strategy="cos", div_factor=div_factor, final_div_factor=final_div_factor)
    return optimizer, scheduler
