"""Sonata's segmentation loss: cross-entropy + Lovász-softmax (classes present, whole batch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Multiclass Lovász-softmax over the classes present in ``target`` (Berman et al. 2018).

    Every class is one column of an (N, C) problem: one sort, gather and two cumsums for all
    classes, and absent classes masked out of the mean, instead of a loop over ``unique(target)``
    (a host sync and ~20 small kernels per class, forward and backward, in every training step).
    Tied errors may sort in another order than a per-class sort; the loss is the same (a tie's
    Jaccard increments telescope), up to float rounding.
    """
    valid = target != ignore_index
    probs = logits[valid].float().softmax(dim=-1)
    target = target[valid]
    if target.numel() == 0:
        return logits.sum() * 0.0
    classes = torch.arange(probs.shape[1], device=probs.device)
    fg = (target.unsqueeze(1) == classes).float()                         # (N, C)
    errors_sorted, perm = torch.sort((fg - probs).abs(), dim=0, descending=True)
    fg_sorted = fg.gather(0, perm)
    gts = fg_sorted.sum(dim=0)
    intersection = gts - fg_sorted.cumsum(dim=0)
    union = gts + (1.0 - fg_sorted).cumsum(dim=0)                         # >= 1: no 0/0
    jaccard = 1.0 - intersection / union
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    present = (gts > 0).float()
    return ((errors_sorted * grad).sum(dim=0) * present).sum() / present.sum()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, lovasz_weight: float = 1.0,
                      ignore_index: int = -1) -> torch.Tensor:
    loss = F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    if lovasz_weight:
        loss = loss + lovasz_weight * lovasz_softmax(logits, target, ignore_index)
    return loss
