"""Frozen weights stored in the autocast dtype: same outputs and gradients, only frozen matmul
weights converted, sparse convs only under float16. Trainable weights cast once: same outputs and
gradients as autocast's own casts, in one node."""

from __future__ import annotations

import contextlib

import pytest
import torch

from peftbench.model import Segmentor
from peftbench.registry import build_method
from peftbench.train.losses import segmentation_loss
from peftbench.train.precision import cast_once_candidates, store_frozen_weights


def _step(model, batch, dtype):
    """Logits and the trainable parameters' gradients of one loss under CPU autocast."""
    model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in batch.items() if k != "segment"}
    with torch.autocast("cpu", dtype=dtype):
        logits = model(inputs, torch.Generator().manual_seed(0))
        loss = segmentation_loss(logits, batch["segment"])
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _model_with(method: str, micro_config: dict) -> Segmentor:
    torch.manual_seed(0)
    model = Segmentor(micro_config, 5).train()
    build_method(method).apply(model)
    for p in model.parameters():  # non-zero up-projections, so the method's branches take part
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return model


@pytest.mark.parametrize("method", ["gem", "lora"])
def test_stored_frozen_weights_change_nothing_under_autocast(micro_config, scene_batch, method):
    model = _model_with(method, micro_config)
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


def _count_nodes(tensor: torch.Tensor, name: str) -> int:
    seen, stack, count = set(), [tensor.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__ == name
        stack.extend(next_node for next_node, _ in node.next_functions)
    return count


@pytest.mark.parametrize("method", ["full", "gem", "lora"])
def test_trainable_weights_cast_once_change_nothing_under_autocast(micro_config, scene_batch, method, monkeypatch):
    # GEM's adapters keep float32 weights (float32_weights): cast for them, their numbers would change.
    model = _model_with(method, micro_config)
    logits, grads = _step(model, scene_batch, torch.bfloat16)
    monkeypatch.setattr("peftbench.model.trainable_weights_cast_once", lambda model: contextlib.nullcontext())
    logits_autocast, grads_autocast = _step(model, scene_batch, torch.bfloat16)
    assert torch.equal(logits, logits_autocast)
    assert grads.keys() == grads_autocast.keys() and all(torch.equal(grads[n], grads_autocast[n]) for n in grads)
    assert all(type(p) is torch.nn.Parameter for m in model.modules() for p in m._parameters.values() if p is not None)


def test_full_fine_tuning_casts_its_weights_in_one_node_not_one_each(micro_config, scene_batch, monkeypatch):
    model = Segmentor(micro_config, 5).train()
    build_method("full").apply(model)
    inputs = {k: v for k, v in scene_batch.items() if k != "segment"}

    def casts() -> tuple[int, int]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(inputs, torch.Generator().manual_seed(0))
        return _count_nodes(logits, "ToCopyBackward0"), _count_nodes(logits, "_CastOnceBackward")

    per_weight, one_node = casts()
    monkeypatch.setattr("peftbench.model.trainable_weights_cast_once", lambda model: contextlib.nullcontext())
    per_weight_autocast, none = casts()
    assert (one_node, none) == (1, 0)
    assert per_weight_autocast - per_weight >= len(cast_once_candidates(model)) > 50


def test_compiled_blocks_keep_autocasts_own_casts(micro_config):
    # dynamo would guard on the per-step weight copies swapped into the modules
    from peftbench.backbone.compiled import compile_blocks
    from peftbench.train.precision import _trainable_float32

    model = _model_with("full", micro_config)
    assert len(_trainable_float32(model)) > 50
    compile_blocks(model)
    assert _trainable_float32(model) == []
