"""Submanifold sparse conv against dense conv, its backends, and the levels' structure (pooled sites, hypercolumn,
heads per level)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftbench.backbone.sparse_conv import (
    SubMConv3d,
    build_neighbour_map,
    resolve_backend,
    set_default_backend,
    spconv_available,
    submconv_torch,
)
from peftbench.backbone.structure import Point
from peftbench.errors import PeftbenchError

# --------------------------------------------------------------------------- sparse conv


def _two_scenes(n: int = 150, side: int = 8, seed: int = 0) -> Point:
    """Two scenes on the SAME coordinate range, so any cross-scene leak changes the result."""
    gen = torch.Generator().manual_seed(seed)
    grids = []
    for _ in range(2):
        lin = torch.randperm(side**3, generator=gen)[:n]
        grids.append(torch.stack([lin // side**2, lin // side % side, lin % side], 1))
    return Point(grid_coord=torch.cat(grids).int(), offset=torch.tensor([n, 2 * n]))


def _dense_reference(point: Point, feat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per scene: scatter to a dense grid, F.conv3d (cross-correlation), read active sites."""
    k = weight.shape[1]
    out = []
    side = int(point.grid_coord.max()) + 1
    for s in range(point.num_scenes):
        mask = point.batch == s
        g = point.grid_coord[mask].long()
        dense = feat.new_zeros(feat.shape[1], side, side, side)
        dense[:, g[:, 0], g[:, 1], g[:, 2]] = feat[mask].T
        y = F.conv3d(dense[None], weight.permute(0, 4, 1, 2, 3), padding=k // 2)
        out.append(y[0][:, g[:, 0], g[:, 1], g[:, 2]].T)
    return torch.cat(out)


@pytest.mark.parametrize("k", [3, 5])
def test_torch_subm_conv_matches_dense(k: int) -> None:
    point = _two_scenes()
    gen = torch.Generator().manual_seed(k)
    conv = SubMConv3d(6, 5, k, bias=True, indice_key="t", backend="torch").double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        conv.bias.copy_(torch.randn(5, generator=gen))
    feat = torch.randn(len(point.grid_coord), 6, generator=gen, dtype=torch.float64)
    expected = _dense_reference(point, feat, conv.weight.detach()) + conv.bias.detach()
    got = conv(point, feat)
    assert got.shape == (len(feat), 5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # A single-scene neighbour map (scenes merged) gives a different answer: leaks would show.
    merged = build_neighbour_map(point.grid_coord, torch.zeros_like(point.batch), k)
    assert not torch.allclose(submconv_torch(feat, conv.weight, merged) + conv.bias, expected, atol=1e-3)


@pytest.mark.parametrize("k", [3, 5])
def test_torch_subm_conv_gradients_match_dense(k: int) -> None:
    point = _two_scenes(n=100, side=7, seed=1)
    gen = torch.Generator().manual_seed(10 + k)
    weight = torch.randn(4, k, k, k, 3, generator=gen, dtype=torch.float64)
    feat = torch.randn(len(point.grid_coord), 3, generator=gen, dtype=torch.float64)
    probe = torch.randn(len(feat), 4, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (lambda f, w: submconv_torch(f, w, build_neighbour_map(point.grid_coord, point.batch, k)),
               lambda f, w: _dense_reference(point, f, w)):
        f, w = feat.clone().requires_grad_(), weight.clone().requires_grad_()
        (fn(f, w) * probe).sum().backward()
        grads.append((f.grad, w.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=0)


def test_torch_subm_conv_gradcheck_and_frozen_weight() -> None:
    point = _two_scenes(n=20, side=4, seed=2)
    nmap = build_neighbour_map(point.grid_coord, point.batch, 3)
    feat = torch.randn(40, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 3, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: submconv_torch(f, w, nmap), (feat, weight))
    frozen = weight.detach()  # PEFT case: only the input needs a gradient
    submconv_torch(feat, frozen, nmap).sum().backward()
    assert feat.grad is not None and frozen.grad is None


def test_neighbour_cache_shared_across_channel_counts() -> None:
    point = _two_scenes()
    a = SubMConv3d(8, 8, 3, indice_key="stage0", backend="torch")
    b = SubMConv3d(4, 2, 3, indice_key="stage0", backend="torch")
    a(point, torch.randn(300, 8))
    cached = point.neighbours[("stage0", 3)]
    b(point, torch.randn(300, 4))
    assert point.neighbours[("stage0", 3)] is cached and len(point.neighbours) == 1


def test_state_dict_keys_and_init() -> None:
    conv = SubMConv3d(8, 16, 3, bias=True, indice_key="x")
    assert list(conv.state_dict()) == ["weight", "bias"]
    assert conv.weight.shape == (16, 3, 3, 3, 8)
    assert conv.bias.abs().sum() == 0 and 0.015 < conv.weight.std() < 0.025
    assert list(SubMConv3d(2, 2, bias=False).state_dict()) == ["weight"]


def test_backend_selection() -> None:
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(PeftbenchError):
        set_default_backend("cuda")
    with pytest.raises(PeftbenchError):
        SubMConv3d(2, 2, backend="nope")
    set_default_backend("torch")
    set_default_backend("auto")


@pytest.mark.skipif(not spconv_available(), reason="spconv not importable")
def test_torch_backend_matches_spconv_cpu() -> None:
    point = _two_scenes(n=200, side=10, seed=4)
    gen = torch.Generator().manual_seed(5)
    ours = SubMConv3d(8, 6, 3, bias=True, indice_key="s", backend="torch")
    ref = SubMConv3d(8, 6, 3, bias=True, indice_key="s", backend="spconv")
    with torch.no_grad():
        ours.bias.copy_(torch.randn(6, generator=gen))
    ref.load_state_dict(ours.state_dict())
    feat = torch.randn(400, 8, generator=gen)
    threads = torch.get_num_threads()
    outs, grads = [], []
    for conv in (ours, ref):
        f = feat.clone().requires_grad_()
        out = conv(point, f)
        out.square().sum().backward()  # spconv CPU backward needs the stream patch
        outs.append(out.detach())
        grads.append((f.grad, conv.weight.grad))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-4, rtol=1e-4)
    assert "sparse_conv_feat" in point and list(ref.state_dict()) == ["weight", "bias"]
    # spconv's CPU kernels race on >1 thread (intermittently wrong sums); repeat so a missing guard shows.
    for seed in range(60):
        point = _two_scenes(n=200, side=10, seed=100 + seed)
        torch.testing.assert_close(ref(point, feat), ours(point, feat), atol=1e-5, rtol=1e-5)
    assert torch.get_num_threads() == threads  # the one-thread guard around CPU spconv restores it


@pytest.mark.skipif(not spconv_available(), reason="spconv not importable")
@pytest.mark.parametrize("channels,kernel", [((8, 6), 3), ((5, 5), 5)])
def test_spconv_frozen_weight_input_gradient_is_the_mirrored_conv(channels, kernel) -> None:
    """A frozen spconv weight (every PEFT method's CPE) gets its input gradient from one more
    forward conv with the mirrored, channel-swapped weight: equal to the torch backend's."""
    point = _two_scenes(n=200, side=10, seed=6)
    gen = torch.Generator().manual_seed(7)
    ours = SubMConv3d(*channels, kernel, bias=True, indice_key="s", backend="spconv")
    ref = SubMConv3d(*channels, kernel, bias=True, indice_key="s", backend="torch")
    with torch.no_grad():
        ours.weight.copy_(torch.randn(ours.weight.shape, generator=gen))
    ref.load_state_dict(ours.state_dict())
    feat, grad_out = torch.randn(400, channels[0], generator=gen), torch.randn(400, channels[1], generator=gen)
    grads = []
    for conv in (ours, ref):
        conv.requires_grad_(False)
        f = feat.clone().requires_grad_()
        conv(point, f).backward(grad_out)
        grads.append(f.grad)
        assert conv.weight.grad is None
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not spconv_available(), reason="spconv not importable")
@pytest.mark.parametrize("frozen", [True, False])
def test_spconv_conv_graph_does_not_keep_the_point_alive(frozen: bool) -> None:
    """The block stores the conv's output on the point (``point.feat``): a backward that kept the
    point would make a cycle through the autograd graph that nothing frees (GPU memory grew by
    GiBs per step on an H200)."""
    import gc
    import weakref

    conv = SubMConv3d(4, 4, 3, bias=True, indice_key="s", backend="spconv").requires_grad_(not frozen)
    point = _two_scenes(n=200, side=10, seed=8)
    feat = torch.randn(400, 4, requires_grad=True)
    point.feat = conv(point, feat)
    alive = weakref.ref(point)
    del point
    gc.collect()
    assert alive() is None


@pytest.mark.skipif(not spconv_available(), reason="spconv not importable")
def test_spconv_index_pairs_built_once_per_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """Convs sharing an indice key (the CPE, GEM's SA at rank r) reuse the first one's pairs:
    spconv leaves them on its output tensor only, which we do not keep."""
    import spconv.pytorch.ops as ops

    builds = []
    for name in ("get_indice_pairs", "get_indice_pairs_implicit_gemm"):
        original = getattr(ops, name)

        def counted(*args, _original=original, **kwargs):
            builds.append(1)
            return _original(*args, **kwargs)
        monkeypatch.setattr(ops, name, counted)
    point = _two_scenes(n=200, side=10, seed=4)
    gen = torch.Generator().manual_seed(5)
    convs = [SubMConv3d(8, 8, 3, indice_key="s", backend=b) for b in ("spconv", "torch")]
    rank = [SubMConv3d(4, 4, 3, indice_key="s", backend=b) for b in ("spconv", "torch")]
    rank[0].load_state_dict(rank[1].state_dict())
    convs[0].load_state_dict(convs[1].state_dict())
    feat, low = torch.randn(400, 8, generator=gen), torch.randn(400, 4, generator=gen)
    outs = [(c(point, feat), r(point, low), c(point, feat)) for c, r in zip(convs, rank)]
    assert len(builds) == 1
    for ours, ref in zip(outs[0], outs[1]):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_pooled_levels_carry_offsets_and_grid_max_without_host_syncs(micro_config) -> None:
    """Each pooled level's scene offsets (by search) and per-axis grid max (from its parent's)
    are what the level's own points give: they replace a bincount and a max read back per level."""
    from peftbench.backbone import PointTransformerV3
    from peftbench.backbone.structure import batch_to_offset
    from conftest import random_scene_batch

    model = PointTransformerV3(**micro_config).eval()
    with torch.no_grad():
        point = model(Point(random_scene_batch()))
    levels = 0
    while "pooling_parent" in point:
        assert point.offset.tolist() == batch_to_offset(point.batch).tolist()
        assert point.grid_max() == point.grid_coord.max(0).values.tolist()
        point, levels = point["pooling_parent"], levels + 1
    assert levels >= 2 and point.grid_max() == point.grid_coord.max(0).values.tolist()


@pytest.mark.parametrize("backend", ["torch", "spconv", "gather"])
def test_every_level_s_sites_are_built_before_the_first_block(micro_config, backend: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The waits of a level's pooling (``unique``), scene sizes (host ints) and sparse-conv index
    pairs come before any block is queued, and the forward then pools onto exactly those sites and
    convolves with those pairs (no second build, no leftovers)."""
    from peftbench.backbone import PointTransformerV3
    from peftbench.backbone.pooling import GridPooling
    from conftest import random_scene_batch

    model = PointTransformerV3(**micro_config).eval()
    for conv in model.modules():
        if isinstance(conv, SubMConv3d):
            conv.backend = backend
    first_block = next(block for _, block in model.encoder_blocks())
    planned = []

    def record(_module, args):
        level, chain = args[0], []
        while level is not None:
            assert "scene_counts" in level  # read from the host already
            key = f"stage{len(chain)}"
            if backend == "torch":
                assert (key, 3) in level["neighbours"]
            elif backend == "gather":
                assert 3 in level["neighbour_tables"] and "sparse_conv_feat" not in level
            else:
                assert f"{key}:k3" in level["sparse_conv_feat"].indice_dict
            chain.append(level)
            level = level.get("pooled_sites")
        planned.append(chain)

    first_block.register_forward_pre_hook(record)
    builds = []
    original = GridPooling.sites

    def counted(self, point):
        builds.append("pooled_sites" not in point)
        return original(self, point)

    monkeypatch.setattr(GridPooling, "sites", counted)
    with torch.no_grad():
        point = model(Point(random_scene_batch()))
    levels = [point]
    while "pooling_parent" in levels[-1]:
        levels.append(levels[-1]["pooling_parent"])
    assert len(planned) == 1 and len(planned[0]) == len(levels) == len(micro_config["enc_depths"])
    assert [level is site for level, site in zip(levels[::-1], planned[0])] == [True] * len(levels)
    assert builds.count(True) == len(levels) - 1  # each level's sites built once, up front
    assert not any("pooled_sites" in level for level in levels)


def test_hypercolumn_concatenates_every_level_onto_its_finest_sites(micro_config) -> None:
    """Each finest site gets, per level, the features of the cell it pooled into (parent first)."""
    from peftbench.backbone import PointTransformerV3, hypercolumn
    from conftest import random_scene_batch

    model = PointTransformerV3(**micro_config).eval()
    with torch.no_grad():
        point = model(Point(random_scene_batch()))
    levels = [point]
    while "pooling_parent" in levels[-1]:
        levels.append(levels[-1]["pooling_parent"])
    levels.reverse()  # finest first
    expected, cell = [levels[0].feat], torch.arange(len(levels[0].feat))
    for parent, child in zip(levels, levels[1:]):
        cell = torch.stack([child["pooling_inverse"][i] for i in cell])  # one site at a time: independent
        assert len(child["pooling_inverse"]) == len(parent.feat)
        expected.append(child.feat[cell])
    out = hypercolumn(point)
    assert out is levels[0] and "pooling_parent" not in out
    assert out.feat.shape[1] == sum(micro_config["enc_channels"]) == model.hypercolumn_channels
    assert torch.equal(out.feat, torch.cat(expected, dim=1))


def test_head_per_level_equals_the_head_on_the_hypercolumn(micro_config) -> None:
    """``hypercolumn_linear`` (the Segmentor's head without the concatenation): the same logits and
    the same gradients as the head on the concatenated hypercolumn, for several scenes (in float64, so
    that only a real difference, not the order of a sum, can show)."""
    from peftbench.backbone import PointTransformerV3, hypercolumn, hypercolumn_linear
    from conftest import random_scene_batch

    torch.manual_seed(0)
    model = PointTransformerV3(**{**micro_config, "shuffle_orders": False}).double()
    head = torch.nn.Linear(model.hypercolumn_channels, 7).double()
    batch = random_scene_batch(sizes=(300, 200))
    batch.update(feat=batch["feat"].double(), coord=batch["coord"].double())
    results = []
    for logits_of in (lambda p: head(hypercolumn(p).feat), lambda p: hypercolumn_linear(p, head)):
        model.zero_grad()
        head.zero_grad()
        logits = logits_of(model(Point(dict(batch))))
        (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)).sum().backward()
        results.append((logits.detach(), head.weight.grad.clone(), next(model.parameters()).grad.clone()))
    (concat, *concat_grads), (per_level, *per_level_grads) = results
    assert per_level.dtype == torch.float64 and per_level.shape == (500, 7)
    torch.testing.assert_close(per_level, concat, rtol=1e-10, atol=1e-10)
    for ours, theirs in zip(per_level_grads, concat_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10 * theirs.abs().max().item())


def test_head_per_level_sums_in_float32_under_autocast(micro_config) -> None:
    """Under autocast each level's term runs in the autocast dtype, their sum in float32: the logits
    are float32 and agree with the head on the hypercolumn to the autocast dtype's precision."""
    from peftbench.backbone import PointTransformerV3, hypercolumn, hypercolumn_linear
    from conftest import random_scene_batch

    torch.manual_seed(0)
    model = PointTransformerV3(**{**micro_config, "shuffle_orders": False}).eval()
    head = torch.nn.Linear(model.hypercolumn_channels, 7)
    batch = random_scene_batch(sizes=(300, 200))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        per_level = hypercolumn_linear(model(Point(dict(batch))), head)
        concat = head(hypercolumn(model(Point(dict(batch)))).feat)
    assert per_level.dtype == torch.float32 and concat.dtype == torch.bfloat16
    torch.testing.assert_close(per_level, concat.float(), rtol=0.05, atol=0.05 * concat.abs().max().item())


def test_spconv_backward_tuned_once_per_channels_at_the_first_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """spconv tunes its backward kernels on the first backward it runs (per channel count) and keeps
    them for every size; the runner runs one throwaway backward at the first (largest) level's size,
    once per (channels, kernel, dtype), never again at a smaller level."""
    import peftbench.backbone.spconv_conv as spconv_conv

    calls: list[tuple[int, bool]] = []
    backwards: list[int] = []

    def fake_call(self, sites, feat, weight, training, autograd=False):  # records; a differentiable stand-in
        calls.append((len(feat), autograd))
        if autograd and feat.requires_grad:
            out = feat @ weight.reshape(weight.shape[0], -1, weight.shape[-1]).sum(1).T.to(feat.dtype)
            out.register_hook(lambda g: backwards.append(len(g)))
            return out
        return feat.new_zeros(len(feat), weight.shape[0])

    monkeypatch.setattr(spconv_conv, "_BACKWARD_TUNED", set())
    monkeypatch.setattr(spconv_conv.SpconvRunner, "__call__", fake_call)
    runner = spconv_conv.SpconvRunner("k", 3)
    weight = torch.randn(4, 3, 3, 3, 4, requires_grad=True)
    runner.tune_backward(None, torch.randn(1000, 4), weight, True)      # level 0: tunes
    runner.tune_backward(None, torch.randn(50, 4), weight, True)        # a deeper level: already tuned
    runner.tune_backward(None, torch.randn(50, 8), torch.randn(8, 3, 3, 3, 8), True)  # other channels: tunes
    assert calls == [(1000, True), (50, True)] and backwards == [1000, 50]
    assert weight.grad is None  # the throwaway gradient reaches nothing of the model
