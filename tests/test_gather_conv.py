"""The gather + matmul submanifold conv equals the pure-torch pair conv, values and gradients."""

from __future__ import annotations

import pytest
import torch

from peftbench.backbone.gather_conv import gather_submconv, neighbour_table
from peftbench.backbone.sparse_conv import build_neighbour_map, submconv_torch
from peftbench.backbone.structure import Point

SPCONV_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # spconv's CUDA build takes CUDA tensors only


def _sites(n: int, side: int, scenes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    coords, batch = [], []
    for b in range(scenes):  # unique sites per scene
        cells = torch.randperm(side ** 3, generator=g)[:n]
        coords.append(torch.stack([cells // side ** 2, cells // side % side, cells % side], 1))
        batch.append(torch.full((n,), b))
    return torch.cat(coords).int(), torch.cat(batch)


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_matches_pair_conv_forward_and_backward(kernel_size: int) -> None:
    grid, batch = _sites(120, 7, 2, seed=kernel_size)
    point = Point(grid_coord=grid, batch=batch, feat=torch.zeros(len(grid), 1))
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(len(grid), 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, kernel_size, kernel_size, kernel_size, 6, generator=g, dtype=torch.float64,
                         requires_grad=True)
    ours = gather_submconv(point, feat, weight)
    ref = submconv_torch(feat, weight, build_neighbour_map(grid, batch, kernel_size))
    torch.testing.assert_close(ours, ref)
    w_out = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((ours * w_out).sum(), [feat, weight])
    ref_grads = torch.autograd.grad((ref * w_out).sum(), [feat, weight])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_table_marks_missing_neighbours_and_scenes_apart() -> None:
    grid = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 0]])
    batch = torch.tensor([0, 0, 1])
    table = neighbour_table(grid, batch, 3, side=2)
    centre, up = 13, 14  # offsets (0,0,0) and (0,0,+1)
    assert table[:, centre].tolist() == [0, 1, 2]
    assert table[:, up].tolist() == [1, 3, 3]  # scene 1's site has no neighbour: index N


def test_spconv_backend_takes_bfloat16_features() -> None:
    """spconv has no bf16 kernels: under bf16 autocast an adapter's conv gets bf16 features."""
    from peftbench.backbone.sparse_conv import SubMConv3d, spconv_available

    if not spconv_available():
        pytest.skip("spconv not installed")
    grid, batch = (t.to(SPCONV_DEVICE) for t in _sites(50, 5, 1, seed=0))
    point = Point(grid_coord=grid, batch=batch, feat=torch.zeros(len(grid), 1, device=SPCONV_DEVICE))
    conv = SubMConv3d(4, 4, 3, bias=False, indice_key="t", backend="spconv").to(SPCONV_DEVICE)
    feat = torch.randn(len(grid), 4, device=SPCONV_DEVICE)
    out = conv(point, feat.bfloat16())
    torch.testing.assert_close(out.float(), conv(point, feat.bfloat16().float()).float())


def test_spconv_computes_in_float16_under_cuda_float16_autocast_in_eval_too(monkeypatch) -> None:
    """spconv's eval path ran float32 features (the residual stream under autocast) in float32 SIMT
    kernels; under CUDA float16 autocast they are cast to float16, as its training path does."""
    from peftbench.backbone.spconv_conv import spconv_dtype

    assert spconv_dtype(torch.float32, "cuda") == torch.float32  # no autocast here: unchanged
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: device_type == "cuda")
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.float16)
    assert spconv_dtype(torch.float32, "cuda") == torch.float16
    assert spconv_dtype(torch.float16, "cuda") == torch.float16
    assert spconv_dtype(torch.float32, "cpu") == torch.float32  # CPU spconv: as given
    assert spconv_dtype(torch.bfloat16, "cuda") == torch.float32  # no bf16 kernels
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.bfloat16)
    assert spconv_dtype(torch.float32, "cuda") == torch.float32


def test_weight_grad_in_chunks_equals_one_chunk() -> None:
    """The chunked weight gradient (a bounded temporary per chunk of sites) sums to the whole."""
    from peftbench.backbone.gather_conv import gathered_weight_grad

    grid, batch = _sites(90, 6, 2, seed=3)
    table = neighbour_table(grid, batch, 3, side=6)
    g = torch.Generator().manual_seed(2)
    feat, grad = torch.randn(len(grid), 5, generator=g), torch.randn(len(grid), 4, generator=g)
    shape = torch.Size([4, 3, 3, 3, 5])
    whole = gathered_weight_grad(feat, grad, table, shape)
    torch.testing.assert_close(gathered_weight_grad(feat, grad, table, shape, chunk_rows=7), whole)
    assert whole.shape == shape and whole.abs().sum() > 0


@pytest.mark.parametrize("chunk_rows,segment_rows", [(1 << 17, 8), (40, 16), (7, 3), (1 << 17, 2048)])
def test_weight_grad_by_segments_equals_the_definition(chunk_rows, segment_rows) -> None:
    """Segmented partial sums (batched matmul) + remainder rows = sum_p grad[p]^T feat[table[p, o]]."""
    from peftbench.backbone.gather_conv import gathered_weight_grad

    grid, batch = _sites(90, 6, 2, seed=4)
    table = neighbour_table(grid, batch, 3, side=6)
    g = torch.Generator().manual_seed(5)
    feat, grad = torch.randn(len(grid), 5, generator=g), torch.randn(len(grid), 4, generator=g)
    padded = torch.cat([feat, feat.new_zeros(1, 5)]).double()
    expected = torch.einsum("po,pki->oki", grad.double(), padded[table]).reshape(4, 3, 3, 3, 5)
    got = gathered_weight_grad(feat, grad, table, torch.Size([4, 3, 3, 3, 5]), chunk_rows, segment_rows)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_auto_takes_the_gathered_conv_on_small_levels_only_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """spconv's ~0.3 ms of host time a call outweighs a small level's conv: ``auto`` on CUDA gathers at
    most ``GATHER_MAX_SITES`` sites; an explicit backend and the CPU keep their choice."""
    from peftbench.backbone import sparse_conv

    monkeypatch.setattr(sparse_conv, "spconv_available", lambda: True)
    monkeypatch.setattr(sparse_conv, "GATHER_MAX_SITES", 100)
    cuda = torch.device("cuda")
    assert sparse_conv.backend_for_sites("auto", cuda, 100) == "gather"
    assert sparse_conv.backend_for_sites("auto", cuda, 101) == "spconv"
    assert sparse_conv.backend_for_sites("spconv", cuda, 10) == "spconv"
    assert sparse_conv.backend_for_sites("auto", "cpu", 10) == "torch"
    monkeypatch.setattr(sparse_conv, "GATHER_MAX_SITES", 0)
    assert sparse_conv.backend_for_sites("auto", cuda, 1) == "spconv"


def test_auto_gathers_every_level_where_the_triton_kernels_take_the_conv(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under CUDA half autocast with Triton the kernels beat spconv at every level, and take the conv where spconv
    is missing too; in float32 or without Triton, large levels stay with spconv (or the torch conv)."""
    from peftbench.backbone import gather_conv, sparse_conv

    monkeypatch.setattr(sparse_conv, "spconv_available", lambda: True)
    cuda, large = torch.device("cuda"), sparse_conv.GATHER_MAX_SITES + 1
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device_type=None: device_type == "cuda")
    for dtype, kernels, expected in ((torch.float16, True, "gather"), (torch.bfloat16, True, "gather"),
                                     (torch.float32, True, "spconv"), (torch.float16, False, "spconv")):
        monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type, dtype=dtype: dtype)
        monkeypatch.setattr(gather_conv, "triton_kernels", lambda name, kernels=kernels: object() if kernels else None)
        assert sparse_conv.backend_for_sites("auto", cuda, large) == expected, (dtype, kernels)
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device_type: torch.float16)
    monkeypatch.setattr(gather_conv, "triton_kernels", lambda name: object())
    monkeypatch.setattr(sparse_conv, "spconv_available", lambda: False)  # the kernels need no spconv
    assert sparse_conv.backend_for_sites("auto", cuda, large) == "gather"
    assert sparse_conv.backend_for_sites("torch", cuda, large) == "torch"  # an explicit backend stays
    monkeypatch.setattr(gather_conv, "TRITON_CONV", 0)
    assert sparse_conv.backend_for_sites("auto", cuda, large) == "torch"
    monkeypatch.setattr(sparse_conv, "spconv_available", lambda: True)
    assert sparse_conv.backend_for_sites("auto", cuda, large) == "spconv"


def test_under_autocast_the_features_are_cast_before_the_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gathered matrix is k^3 times the features: gathered in the autocast dtype, not in float32 and
    then cast; values match the float32 conv within bfloat16's precision and the gradient reaches the input."""
    from peftbench.backbone import gather_conv

    grid, batch = _sites(150, 7, 2, seed=3)
    point = Point(grid_coord=grid, batch=batch, feat=torch.zeros(len(grid), 1))
    g = torch.Generator().manual_seed(3)
    feat, weight = torch.randn(len(grid), 8, generator=g), torch.randn(5, 3, 3, 3, 8, generator=g)
    expected = gather_submconv(point, feat, weight)
    gathered_dtypes = []
    original = gather_conv._gather

    def spy(x, table):
        gathered_dtypes.append(x.dtype)
        return original(x, table)

    monkeypatch.setattr(gather_conv, "_gather", spy)
    feat = feat.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gather_submconv(point, feat, weight)
    out.float().sum().backward()
    assert gathered_dtypes == [torch.bfloat16, torch.bfloat16]  # forward, and the input gradient's
    assert out.dtype == torch.bfloat16 and feat.grad is not None and feat.grad.dtype == torch.float32
    torch.testing.assert_close(out.float(), expected, atol=0.05 * expected.abs().max().item(), rtol=0)


@pytest.mark.parametrize("backend", ["gather", "torch", "spconv"])
def test_extra_weight_columns_equal_a_second_conv_and_only_trainable_rows_get_gradients(backend: str) -> None:
    """``SubMConv3d(point, feat, extra)``: the extra columns from the same call, a frozen weight's
    rows get no gradient, the features' gradient sums both convs' (GEM's SA beside the CPE)."""
    from peftbench.backbone.sparse_conv import SubMConv3d, spconv_available

    if backend == "spconv" and not spconv_available():
        pytest.skip("spconv not installed")
    device = SPCONV_DEVICE if backend == "spconv" else "cpu"
    grid, batch = (t.to(device) for t in _sites(90, 6, 2, seed=3))
    point = Point(grid_coord=grid, batch=batch, feat=torch.zeros(len(grid), 1, device=device))
    g = torch.Generator().manual_seed(2)
    dtype = torch.float32 if backend == "spconv" else torch.float64  # spconv's kernels: no float64
    conv = SubMConv3d(5, 4, 3, bias=True, indice_key="t", backend=backend).to(device, dtype).requires_grad_(False)
    torch.nn.init.normal_(conv.bias)
    feat = torch.randn(len(grid), 5, generator=g, dtype=dtype).to(device).requires_grad_()
    extra = torch.randn(3, 3, 3, 3, 5, generator=g, dtype=dtype).to(device).requires_grad_()
    out, extra_out = conv(point, feat, extra)
    reference = submconv_torch(feat, torch.cat([conv.weight, extra]), build_neighbour_map(grid, batch, 3))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, reference[:, :4] + conv.bias, **tol)
    torch.testing.assert_close(extra_out, reference[:, 4:], **tol)
    w_out = torch.randn(len(grid), 7, generator=g, dtype=dtype).to(device)
    grads = torch.autograd.grad((torch.cat([out, extra_out], 1) * w_out).sum(), [feat, extra])
    ref_grads = torch.autograd.grad((torch.cat([reference[:, :4] + conv.bias, reference[:, 4:]], 1) * w_out).sum(),
                                    [feat, extra])
    for ours, ref in zip(grads, ref_grads):
        torch.testing.assert_close(ours, ref, **tol)
    assert conv.weight.grad is None


@pytest.mark.parametrize("trainable", ["both", "down", "conv"])
def test_factored_extra_weight_is_one_node_and_equals_its_product(monkeypatch: pytest.MonkeyPatch,
                                                                   trainable: str) -> None:
    """GEM's Spatial Adapter's conv as its factors (``FactoredWeight``): in training they are inputs of the conv's
    own node (no product ops in the graph), with the outputs and every gradient of the product made by separate
    ops (``FACTORED_WEIGHTS`` off); in evaluation, the rows kept between calls are rebuilt when a factor changes."""
    from peftbench.backbone import gather_conv
    from peftbench.backbone.sparse_conv import FactoredWeight, SubMConv3d

    grid, batch = _sites(90, 6, 2, seed=5)
    point = Point(grid_coord=grid, batch=batch, feat=torch.zeros(len(grid), 1))
    g = torch.Generator().manual_seed(4)
    conv = SubMConv3d(5, 4, 3, bias=True, indice_key="t", backend="gather").double().requires_grad_(False)
    feat = torch.randn(len(grid), 5, generator=g, dtype=torch.float64, requires_grad=True)
    factors = FactoredWeight(torch.randn(2, 3, 3, 3, 3, generator=g, requires_grad=trainable != "down"),
                             torch.randn(3, 5, generator=g, requires_grad=trainable != "conv"))
    leaves = [t for t in (feat, factors.conv, factors.down) if t.requires_grad]
    w_out = torch.randn(len(grid), 6, generator=g, dtype=torch.float64)

    def run(factored: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        monkeypatch.setattr(gather_conv, "FACTORED_WEIGHTS", factored)
        out, extra_out = conv(point, feat, factors)
        return out, extra_out, torch.autograd.grad((torch.cat([out, extra_out], 1) * w_out).sum(), leaves)

    out, extra_out, grads = run(1)
    inputs = {fn.variable for fn, _ in extra_out.grad_fn.next_functions[0][0].next_functions if fn is not None
              and hasattr(fn, "variable")}
    assert type(extra_out.grad_fn.next_functions[0][0]).__name__ == "_GatherConvBackward"
    assert inputs == set(leaves)  # the features and the trainable factors, nothing made from them between
    ref_out, ref_extra, ref_grads = run(0)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(extra_out, ref_extra)
    for ours, ref in zip(grads, ref_grads):
        torch.testing.assert_close(ours, ref)
    with torch.no_grad():
        kept = conv(point, feat, factors)[1]
        factors.down.mul_(2)  # the memo's source changed in place: the rows are made again
        torch.testing.assert_close(conv(point, feat, factors)[1], 2 * kept)
        torch.testing.assert_close(kept, ref_extra)


@pytest.mark.parametrize("kernels, spconv, says", [
    (True, True, ["every level takes the gathered conv's Triton kernels", "otherwise spconv, with levels of at most"]),
    (True, False, ["every level takes the gathered conv's Triton kernels", "otherwise the torch conv"]),
    (False, True, ["Triton does not import", "otherwise spconv"])])
def test_doctor_says_which_conv_a_gpu_run_takes(monkeypatch: pytest.MonkeyPatch, kernels, spconv, says) -> None:
    from peftbench import doctor
    from peftbench.backbone import gather_conv, sparse_conv

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(gather_conv, "kernels_available", lambda: kernels)
    monkeypatch.setattr(sparse_conv, "spconv_available", lambda: spconv)
    monkeypatch.setattr(doctor, "_spconv_import_error", lambda: None if spconv else "no module named spconv")
    line = dict(doctor.backends())["sparse conv"]
    assert line.startswith("spconv:" if spconv else "torch:") and all(part in line for part in says), line
