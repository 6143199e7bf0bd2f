"""Dense per-scene latent attention equals the per-point (gather + segment softmax) formulation."""

from __future__ import annotations

import pytest
import torch

from peftbench.backbone.latent_attention import scene_latent_attention


def _per_point(k, v, q, latents, batch, scale, read_updated=False):
    """GEM's Context Adapter written point by point and scene by scene (float64)."""
    outs, updated = [], []
    for b in range(latents.shape[0]):  # scenes are contiguous runs of ``batch``
        rows = batch == b
        aff = k[rows] @ latents[b].T * scale                          # (n_b, m)
        updated.append(latents[b] + aff.softmax(dim=0).T @ v[rows])   # softmax over the scene's points
        scored = updated[b] if read_updated else latents[b]
        read = aff if q is None and not read_updated else (k if q is None else q)[rows] @ scored.T * scale
        outs.append(read.softmax(dim=-1) @ updated[b])
    return torch.cat(outs), torch.stack(updated)


@pytest.mark.parametrize("counts", [[7], [5, 9, 1], [12, 3]])
@pytest.mark.parametrize("with_q", [False, True])
@pytest.mark.parametrize("read_updated", [False, True])
def test_matches_per_scene_loop(counts: list[int], with_q: bool, read_updated: bool) -> None:
    g = torch.Generator().manual_seed(len(counts) + with_q)
    n, m, r = sum(counts), 4, 8
    k, v, q = (torch.randn(n, r, generator=g, dtype=torch.float64) for _ in range(3))
    latents = torch.randn(len(counts), m, r, generator=g, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    out, updated = scene_latent_attention(k, v, q if with_q else None, latents, batch, 0.3, read_updated)
    ref_out, ref_updated = _per_point(k, v, q if with_q else None, latents, batch, 0.3, read_updated)
    assert out.dtype == torch.float32 and updated.dtype == torch.float32  # the float32 contract
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(updated.double(), ref_updated, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("counts", [[9], [6, 4, 5]])
@pytest.mark.parametrize("with_v", [False, True])
@pytest.mark.parametrize("with_q", [False, True])
@pytest.mark.parametrize("read_updated", [False, True])
def test_gradients_match(read_updated: bool, with_q: bool, with_v: bool, counts: list[int]) -> None:
    """The written-out backward equals autograd through the per-scene loop for every input (keys,
    values or keys as values, queries or keys as queries, latents), one scene or several (-inf bias),
    with a gradient on both outputs."""
    g = torch.Generator().manual_seed(0)
    m, r = 3, 5
    n = sum(counts)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    k, v, q = (torch.randn(n, r, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    latents = torch.randn(len(counts), m, r, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(n, r, generator=g, dtype=torch.float64)
    v, q = (v if with_v else None), (q if with_q else None)
    out, upd = scene_latent_attention(k, v, q, latents, batch, 0.5, read_updated=read_updated)
    wanted = [t for t in (k, v, q, latents) if t is not None]
    ours = torch.autograd.grad((out * w).sum() + (upd * upd).sum(), wanted)
    out, upd = _per_point(k, k if v is None else v, q, latents, batch, 0.5, read_updated)
    ref = torch.autograd.grad((out * w).sum() + (upd * upd).sum(), wanted)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_updated_latents_without_a_gradient_of_their_own() -> None:
    """Only the read-out used (the last block): the latents' incoming gradient is absent."""
    g = torch.Generator().manual_seed(1)
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([5, 4]))
    k = torch.randn(9, 4, generator=g, dtype=torch.float64, requires_grad=True)
    latents = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    out, _ = scene_latent_attention(k, None, None, latents, batch, 0.5)
    ours = torch.autograd.grad(out.sum(), [k, latents])
    ref = torch.autograd.grad(_per_point(k, k, None, latents, batch, 0.5, True)[0].sum(), [k, latents])
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_keys_as_values_and_a_kept_bias_give_the_same_result() -> None:
    """``v=None`` (shared_qk) is ``v=k``; a level's kept ``scene_bias`` is the one built inside."""
    from peftbench.backbone.latent_attention import off_scene_bias

    g = torch.Generator().manual_seed(3)
    counts, m, r = [5, 9, 2], 4, 8
    k = torch.randn(sum(counts), r, generator=g)
    latents = torch.randn(len(counts), m, r, generator=g)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    ref = scene_latent_attention(k, k, None, latents, batch, 0.3)
    bias = off_scene_bias(batch, len(counts), m)
    assert bias.shape == (sum(counts), len(counts) * m) and int((bias == 0).sum()) == sum(counts) * m
    assert bool((bias[bias != 0] == float("-inf")).all())
    for got in (scene_latent_attention(k, None, None, latents, batch, 0.3),
                scene_latent_attention(k, None, None, latents, batch, 0.3, scene_bias=bias)):
        torch.testing.assert_close(got[0], ref[0])
        torch.testing.assert_close(got[1], ref[1])
