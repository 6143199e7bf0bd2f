"""GEM's Context Adapter under mixed precision: float32 softmax and accumulation whatever the
autocast dtype and device; train steps under CPU autocast."""

from __future__ import annotations

import sys

import pytest
import torch

from peftbench.backbone.latent_attention import scene_latent_attention
from peftbench.model import Segmentor
from peftbench.registry import build_method, get_method
from peftbench.train.losses import segmentation_loss

_gem = sys.modules[get_method("gem").__module__]  # the plugin as the registry loaded it
ContextAdapter, LatentBank = _gem.ContextAdapter, _gem.LatentBank


class _Point(dict):
    """What a Context Adapter reads from a point batch: scene index and state, and its cache."""

    def __init__(self, batch: torch.Tensor, num_scenes: int) -> None:
        super().__init__()
        self.batch, self.num_scenes, self.scene_state = batch, num_scenes, {}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["gem", "sa", "ca"])
def test_train_step_under_cpu_autocast(micro_config, scene_batch, method, dtype):
    torch.manual_seed(0)
    model = Segmentor(micro_config, 5).train()
    build_method(method).apply(model)
    for name, p in model.named_parameters():
        if "gem_" in name and name.endswith("up.weight"):
            torch.nn.init.normal_(p, std=0.05)  # non-zero read-out: gradients reach every GEM weight
    inputs = {k: v for k, v in scene_batch.items() if k != "segment"}
    with torch.autocast("cpu", dtype=dtype):
        logits = model(inputs, torch.Generator().manual_seed(0))
        loss = segmentation_loss(logits, scene_batch["segment"])
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if "gem_" in n}
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_context_adapter_keeps_float32_inside_and_casts_back(dtype):
    torch.manual_seed(0)
    sizes = (120_000, 80_000)  # 200k points, two scenes
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor(sizes))
    adapter = ContextAdapter(16, 8, "shared_qk", LatentBank(4, 8, 0.02))
    torch.nn.init.normal_(adapter.up.weight, std=0.1)
    point = _Point(batch, 2)
    h = (torch.randn(sum(sizes), 16) * 4).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        out = adapter(point, h)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert point.scene_state["gem_latents"].dtype == torch.float32


def test_per_scene_weights_sum_to_one_at_200k_points():
    """With values of one and zero latents, the update ``L + softmax_over_points(a)^T v`` is each
    scene's weight total: 1 per latent, from half-precision keys."""
    torch.manual_seed(0)
    sizes = (150_000, 50_000)
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor(sizes))
    for dtype in (torch.bfloat16, torch.float16):
        k = (torch.randn(sum(sizes), 8) * 8).to(dtype)  # half-precision input, as projections give
        ones = torch.ones(sum(sizes), 8, dtype=dtype)
        _, updated = scene_latent_attention(k, ones, None, torch.zeros(2, 4, 8), batch, 1.0)
        torch.testing.assert_close(updated, torch.ones(2, 4, 8), rtol=0, atol=1e-4)


@pytest.mark.parametrize("proj", ["shared_qk", "shared_kv", "qkv+up"])
def test_read_latents_updated_vs_previous(proj):
    """``updated`` scores the points against the updated latents in every mode; ``previous``
    against the latents before the update (for shared_qk: step 1's affinity itself)."""
    torch.manual_seed(0)
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([50, 30]))
    h = torch.randn(80, 16)
    outs = {}
    for read in ("updated", "previous"):
        torch.manual_seed(1)
        adapter = ContextAdapter(16, 8, proj, LatentBank(4, 8, 0.5), read)
        torch.nn.init.eye_(adapter.up.weight[:8])
        outs[read] = adapter(_Point(batch, 2), h)
    assert not torch.allclose(outs["updated"], outs["previous"])
    # Reference for the default: the read-out softmax of q against the updated latents.
    torch.manual_seed(1)
    adapter = ContextAdapter(16, 8, proj, LatentBank(4, 8, 0.5), "updated")
    torch.nn.init.eye_(adapter.up.weight[:8])
    point = _Point(batch, 2)
    adapter(point, h)
    latents = point.scene_state["gem_latents"].index_select(0, batch)
    q = (adapter.q if hasattr(adapter, "q") else adapter.k)(h)
    read = torch.einsum("nr,nmr->nm", q, latents) * adapter.scale
    expected = adapter.up(torch.einsum("nm,nmr->nr", read.softmax(-1), latents))
    torch.testing.assert_close(outs["updated"], expected)
