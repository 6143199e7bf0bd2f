"""Sonata's segmentation loss: cross-entropy + Lovász-softmax (classes present, whole batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Multiclass Lovász-softmax over the classes present in ``target`` (Berman et al. 2018)."""
    valid = target != ignore_index
    probs = logits[valid].float().softmax(dim=-1)
    target = target[valid]
    if target.numel() == 0:
        return logits.sum() * 0.0
    losses = []
    for c in torch.unique(target):
        fg = (target == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        fg_sorted = fg[perm]
        gts = fg_sorted.sum()
        intersection = gts - fg_sorted.cumsum(0)
        union = gts + (1.0 - fg_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        losses.append(torch.dot(errors_sorted, jaccard))
    return torch.stack(losses).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, lovasz_weight: float = 1.0,
                      ignore_index: int = -1) -> torch.Tensor:
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    if lovasz_weight:
        loss = loss + lovasz_weight * lovasz_softmax(logits, target, ignore_index)
    return loss
