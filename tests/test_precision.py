"""Frozen weights stored in the autocast dtype: same outputs and gradients, only frozen matmul
weights converted, sparse convs only under float16."""

from __future__ import annotations

import pytest
import torch

from peftbench.model import Segmentor
from peftbench.registry import build_method
from peftbench.train.losses import segmentation_loss
from peftbench.train.precision import store_frozen_weights


def _step(model, batch, dtype):
    """Logits and the trainable parameters' gradients of one loss under CPU autocast."""
    model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in batch.items() if k != "segment"}
    with torch.autocast("cpu", dtype=dtype):
        logits = model(inputs, torch.Generator().manual_seed(0))
        loss = segmentation_loss(logits, batch["segment"])
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["gem", "lora"])
def test_stored_frozen_weights_change_nothing_under_autocast(micro_config, scene_batch, method):
    torch.manual_seed(0)
    model = Segmentor(micro_config, 5).train()
    build_method(method).apply(model)
    for p in model.parameters():  # non-zero up-projections, so the method's branches take part
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    logits, grads = _step(model, scene_batch, torch.bfloat16)
    converted = store_frozen_weights(model, torch.bfloat16)
    assert converted > 0
    logits_after, grads_after = _step(model, scene_batch, torch.bfloat16)
    assert torch.equal(logits, logits_after)
    assert grads.keys() == grads_after.keys() and all(torch.equal(grads[n], grads_after[n]) for n in grads)


def test_only_frozen_matmul_weights_are_converted(micro_config):
    model = Segmentor(micro_config, 5)
    build_method("gem").apply(model)
    store_frozen_weights(model, torch.bfloat16)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["backbone.enc.enc0.block0.attn.qkv.weight"] == torch.bfloat16      # frozen linear
    assert dtypes["backbone.enc.enc0.block0.norm1.0.weight"] == torch.float32        # norms stay
    assert dtypes["backbone.enc.enc0.block0.cpe.0.weight"] == torch.float32          # conv: fp16 only
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    store_frozen_weights(model, torch.float16)
    assert model.get_parameter("backbone.enc.enc0.block0.cpe.0.weight").dtype == torch.float16
