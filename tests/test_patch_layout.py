"""The full-patches-first layout gives the reference flash-path attention, patch for patch."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from peftbench.backbone.attention import SerializedAttention
from peftbench.backbone.patch_layout import cached_patch_layout, patch_layout
from peftbench.backbone.patching import patch_padding
from peftbench.backbone.serialization import serialize
from peftbench.backbone.structure import Point
from peftbench.registry import get_method


def _reference_attention(attn: SerializedAttention, point: Point, feat: torch.Tensor, k: int) -> torch.Tensor:
    """The reference flash path written out: pad, one attention per cu_seqlens sequence, unpad."""
    pad, unpad, cu = patch_padding(point.offset, k)
    order = point.serialized_order[attn.order_index][pad]
    inverse = unpad[point.serialized_inverse[attn.order_index]]
    h, d = attn.num_heads, attn.channels // attn.num_heads
    qkv = attn.qkv(feat)[order].view(-1, 3, h, d)
    out = torch.empty(len(qkv), h, d)
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        q, kk, v = qkv[s:e].permute(1, 2, 0, 3)  # (H, L, d) each
        if attn.kv_prefix is not None:  # the same m rows before every patch's keys and values
            pk, pv = (t.transpose(0, 1) for t in attn.kv_prefix())
            kk, v = torch.cat([pk, kk], dim=1), torch.cat([pv, v], dim=1)
        out[s:e] = F.scaled_dot_product_attention(q, kk, v, scale=attn.scale).transpose(0, 1)
    return attn.proj(out.reshape(-1, attn.channels)[inverse])


@pytest.mark.parametrize("counts", [[5, 12], [3, 11], [8, 10], [4, 4, 1], [20], [2, 30, 7]])
def test_layout_is_a_permutation_of_the_reference_padding(counts: list[int]) -> None:
    k = 4
    offset = torch.tensor(counts).cumsum(0)
    layout = patch_layout(counts, k, "cpu")
    pad, unpad, _ = patch_padding(offset, k)
    assert sorted(layout.pad.tolist()) == sorted(pad.tolist())          # same slots, reordered
    assert (layout.pad[layout.unpad] == torch.arange(sum(counts))).all()  # unpad finds each point
    full = layout.pad[: layout.num_full * k].view(-1, k)
    scene = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    assert (scene[full] == scene[full[:, :1]]).all()                    # a patch never straddles scenes
    assert [n for _, n in layout.shorts] == [n for n in counts if n < k]


@pytest.mark.parametrize("counts,k", [([70, 33, 129], 32), ([10, 64], 16), ([9, 9], 16), ([64], 16)])
def test_attention_matches_reference_flash_path(counts: list[int], k: int) -> None:
    torch.manual_seed(0)
    n = sum(counts)
    grid = torch.randint(0, 16, (n, 3))
    point = Point(grid_coord=grid, offset=torch.tensor(counts).cumsum(0), feat=torch.randn(n, 32))
    serialize(point, ("z", "hilbert"), shuffle_orders=False)
    attn = SerializedAttention(32, 4, k, order_index=1).eval()
    with torch.no_grad():
        ours = attn(point, point.feat)
        ref = _reference_attention(attn, point, point.feat, k)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-5)
    assert cached_patch_layout(point, k) is point["patch_layouts"][k]  # built once per level


@pytest.mark.parametrize("prefix", [False, True])
@pytest.mark.parametrize("counts,k", [([70, 33, 129], 32), ([9, 9], 16), ([40, 9, 70], 16)])
def test_attention_backward_matches_reference_and_copies_no_rows(counts: list[int], k: int, prefix: bool) -> None:
    """The input's and the weights' gradients (and a key/value prefix's) are the reference's; the
    backward's only copy of the packed rows is unbind's stack, which writes the (slots, 3, H, d)
    layout the qkv linear reads."""
    torch.manual_seed(0)
    n = sum(counts)
    point = Point(grid_coord=torch.randint(0, 16, (n, 3)), offset=torch.tensor(counts).cumsum(0),
                  feat=torch.randn(n, 32))
    serialize(point, ("z", "hilbert"), shuffle_orders=False)
    attn = SerializedAttention(32, 4, k, order_index=1)
    if prefix:
        attn.kv_prefix = sys.modules[get_method("prompt").__module__].PromptPrefix(3, 4, 8)
    grads = []
    for run in (attn, lambda p, f: _reference_attention(attn, p, f, k)):
        feat = point.feat.clone().requires_grad_()
        out = run(point, feat)
        attn.zero_grad()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        grads.append([feat.grad] + [p.grad.clone() for p in attn.parameters()])
        if run is attn:
            copies = [e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")]
            assert copies == [], copies
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_attention_never_asks_for_cudnn_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's SDPA plans per shape (0.5 s a step with a new point count every batch): kept off."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append((torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled()))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    counts = [40, 9]
    point = Point(grid_coord=torch.randint(0, 16, (49, 3)), offset=torch.tensor(counts).cumsum(0),
                  feat=torch.randn(49, 32))
    serialize(point, ("z",), shuffle_orders=False)
    SerializedAttention(32, 4, 16)(point, point.feat).sum().backward()
    assert seen and all(not cudnn and flash for cudnn, flash in seen)
    assert torch.backends.cuda.cudnn_sdp_enabled()  # the process-wide setting is restored


@pytest.mark.parametrize("counts,k", [([70, 33, 129], 32), ([10, 64], 16), ([9, 9], 16), ([2, 30, 7], 4)])
def test_rows_to_and_from_slots_give_index_select_s_values_and_gradients(counts: list[int], k: int) -> None:
    """The slot maps' backwards gather with the inverse map instead of index_add: same gradients,
    padding repeats (a point in two slots) and short patches included."""
    torch.manual_seed(0)
    n = sum(counts)
    point = Point(grid_coord=torch.randint(0, 16, (n, 3)), offset=torch.tensor(counts).cumsum(0),
                  feat=torch.randn(n, 8))
    serialize(point, ("z", "hilbert"), shuffle_orders=False)
    layout = cached_patch_layout(point, k)
    slots = layout.order(point, 1)
    assert len(slots.repeats) == sum(-(-c // k) * k - c for c in counts if c >= k)
    rows = torch.randn(n, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(len(slots.gather), 8, dtype=torch.float64)
    ours = slots.to_slots(rows)
    theirs = rows.index_select(0, slots.gather)
    assert torch.equal(ours, theirs)
    grads = [torch.autograd.grad((out * weight).sum(), rows)[0] for out in (ours, theirs)]
    assert torch.allclose(*grads, atol=1e-12)
    in_slots = torch.randn(len(slots.gather), 8, dtype=torch.float64, requires_grad=True)
    back = torch.randn(n, 8, dtype=torch.float64)
    ours, theirs = slots.from_slots(in_slots), in_slots.index_select(0, slots.scatter)
    assert torch.equal(ours, theirs)
    grads = [torch.autograd.grad((out * back).sum(), in_slots)[0] for out in (ours, theirs)]
    assert torch.allclose(*grads, atol=1e-12)
