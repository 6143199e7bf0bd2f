"""Pointcept's segmentation metric: intersection / union / target per class, summed over scenes;
mIoU averages over all classes (an absent class counts 0)."""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = -1) -> torch.Tensor:
    """(K, K) counts on ``pred``'s device, rows = ground truth, columns = prediction; ignored targets
    dropped. No host sync (no boolean indexing, no ``bincount`` size read back): a GPU evaluation
    keeps queueing work."""
    cells = num_classes * num_classes
    index = torch.where(target != ignore_index, target.long() * num_classes + pred.long(), cells)  # cells: dropped
    counts = torch.zeros(cells + 1, dtype=torch.long, device=pred.device)
    counts.index_add_(0, index, torch.ones_like(index))
    return counts[:cells].view(num_classes, num_classes)


def scores_from_confusion(confusion: torch.Tensor | np.ndarray) -> dict[str, float | list[float]]:
    """mIoU, mAcc, allAcc (fractions) and per-class IoU, as Pointcept's ``intersection_and_union``."""
    cm = np.asarray(confusion, dtype=np.float64)
    intersection = np.diag(cm)
    target = cm.sum(axis=1)
    union = cm.sum(axis=0) + target - intersection
    iou = intersection / (union + 1e-10)
    acc = intersection / (target + 1e-10)
    return {
        "mIoU": float(iou.mean()),
        "mAcc": float(acc.mean()),
        "allAcc": float(intersection.sum() / (target.sum() + 1e-10)),
        "iou": iou.tolist(),
    }
