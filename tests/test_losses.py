"""The batched Lovász-softmax equals the per-class loop it replaced (values and gradients)."""

from __future__ import annotations

import pytest
import torch

from peftbench.train.losses import lovasz_softmax, segmentation_loss


def _per_class_lovasz(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """The former implementation: one sort per class present."""
    valid = target != ignore_index
    probs = logits[valid].double().softmax(dim=-1)
    target = target[valid]
    losses = []
    for c in torch.unique(target):
        fg = (target == c).double()
        errors_sorted, perm = torch.sort((fg - probs[:, c]).abs(), descending=True)
        fg_sorted = fg[perm]
        gts = fg_sorted.sum()
        jaccard = 1.0 - (gts - fg_sorted.cumsum(0)) / (gts + (1.0 - fg_sorted).cumsum(0))
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        losses.append(torch.dot(errors_sorted, jaccard))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("seed,classes,present", [(0, 20, 20), (1, 20, 3), (2, 5, 1), (3, 13, 7)])
def test_batched_lovasz_matches_per_class_loop(seed: int, classes: int, present: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 3000
    target = torch.randint(0, present, (n,), generator=gen) * (classes // present)
    target[torch.rand(n, generator=gen) < 0.1] = -1                      # ignored points
    logits = torch.randn(n, classes, generator=gen, dtype=torch.float64)
    logits[:50] = logits[50:100]                                        # ties
    grads = []
    for fn in (lovasz_softmax, _per_class_lovasz):
        x = logits.clone().requires_grad_()
        loss = fn(x, target)
        loss.backward()
        grads.append((loss.detach(), x.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-8, atol=1e-12)


def test_lovasz_without_labelled_points_is_zero_with_a_gradient() -> None:
    logits = torch.randn(10, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((10,), -1), lovasz_weight=1.0)  # CE ignores all: nan
    lovasz = lovasz_softmax(logits, torch.full((10,), -1))
    lovasz.backward()
    assert lovasz.item() == 0.0 and logits.grad is not None and loss.isnan()
