"""The gathered conv's Triton kernels (the gather inside the matmul) against their definitions and the
gather-then-matmul path: on CUDA in float16 and bfloat16 where there is one, else on CPU in float32 through
Triton's interpreter (conftest turns it on)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from peftbench.backbone import gather_conv  # noqa: E402
from peftbench.backbone.structure import Point  # noqa: E402
from tests.test_gather_conv import _sites  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE, DTYPE = ("cuda", torch.float16) if CUDA else ("cpu", torch.float32)
# (dtype, tolerance over the largest value): the output's rounding, the inputs being the same
DTYPES = [(torch.float16, 2e-3), (torch.bfloat16, 8e-3)] if CUDA else [(torch.float32, 2e-3)]
# weights wider than the features (CPU: float64 against float32 features), as a frozen float32 CPE weight and GEM's
# float32 extra rows are under half autocast
WIDE = torch.float32 if CUDA else torch.float64


@pytest.fixture(scope="module")
def kernels():
    import peftbench.backbone.triton_gather_conv as module
    return module


def _case(sites: int, in_ch: int, out_ch: int, seed: int, dtype: torch.dtype = DTYPE):
    grid, batch = _sites(sites, 6, 2, seed=seed)  # two scenes: neighbours never cross them; many are absent
    table = gather_conv.neighbour_table(grid, batch, 3, side=6).to(DEVICE)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(grid), in_ch, generator=g).to(DEVICE, dtype)
    weight = (torch.randn(out_ch, 27, in_ch, generator=g) / 8).to(DEVICE, dtype)
    return grid, batch, table, x, weight


# 2 scenes x 90 sites: tiles of 64 rows, the last partial; 48 -> 40 columns: a partial K tile (32 + 16) and
# one N tile; 24 -> 160: N in two tiles of 128, the second partial
@pytest.mark.parametrize("dtype, tolerance", DTYPES)
@pytest.mark.parametrize("in_ch, out_ch", [(48, 40), (24, 160), (16, 16)])
def test_forward_and_input_gradient_equal_gather_then_matmul(kernels, in_ch, out_ch, dtype, tolerance):
    _, _, table, x, weight = _case(90, in_ch, out_ch, seed=in_ch, dtype=dtype)
    padded = torch.cat([x, x.new_zeros(1, in_ch)]).double()
    expected = torch.einsum("pki,oki->po", padded[table], weight.double())
    got = kernels.gather_matmul(x, table, weight, transposed=False)
    assert got.dtype == x.dtype and got.shape == (len(x), out_ch)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=tolerance * expected.abs().max().item())

    grad = torch.randn(len(x), out_ch, generator=torch.Generator().manual_seed(7)).to(DEVICE, dtype)
    padded_grad = torch.cat([grad, grad.new_zeros(1, out_ch)]).double()
    # the input gradient by its definition: every site scatters W[:, o]^T grad[p] to its neighbour at o
    expected_dx = torch.zeros(len(x) + 1, in_ch, dtype=torch.float64, device=DEVICE)
    expected_dx.index_add_(0, table.reshape(-1),
                           torch.einsum("po,oki->pki", padded_grad[:-1], weight.double()).reshape(-1, in_ch))
    got_dx = kernels.gather_matmul(grad, table, weight, transposed=True)
    assert got_dx.shape == x.shape
    torch.testing.assert_close(got_dx.double(), expected_dx[:-1], rtol=0,
                               atol=tolerance * expected_dx.abs().max().item())


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("offsets", [27, 26])
@pytest.mark.parametrize("programs", [1024, 27 * 2])
def test_weight_gradient_equals_its_definition(kernels, monkeypatch, programs, offsets, group):
    """One split of the rows, or several (27 offsets x 1 tile x 2 splits: partial sums added); the output
    gradient a column slice of a wider one, as the CPE's rows and GEM's extra rows are; one offset a program or
    three (26 offsets: the last program's third is past the end)."""
    monkeypatch.setitem(kernels.WEIGHT_GRAD_TILES, "offsets", group)
    _, _, table, x, _ = _case(90, 40, 8, seed=5)
    table = table[:, :offsets]
    wide = torch.randn(len(x), 24, generator=torch.Generator().manual_seed(6)).to(DEVICE, DTYPE)
    dy = wide[:, 16:]
    padded = torch.cat([x, x.new_zeros(1, 40)]).double()
    expected = torch.einsum("po,pki->oki", dy.double(), padded[table])
    got = kernels.gather_weight_grad(x, table, dy, programs=programs)
    assert got.dtype == torch.float32 and got.shape == (8, offsets, 40)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-3 * expected.abs().max().item())


def test_no_sites(kernels):
    x, table, weight = torch.zeros(0, 16, device=DEVICE), torch.zeros(0, 27, dtype=torch.long, device=DEVICE), \
        torch.zeros(8, 27, 16, device=DEVICE)
    assert kernels.gather_matmul(x, table, weight, transposed=False).shape == (0, 8)
    assert kernels.gather_weight_grad(x, table, torch.zeros(0, 8, device=DEVICE)).abs().sum() == 0


@pytest.mark.parametrize("weight_dtype", [DTYPE, WIDE])
def test_gathered_conv_takes_the_kernel_with_extra_columns_values_and_gradients(kernels, monkeypatch, weight_dtype):
    """Through ``gather_submconv`` (as the CPE's conv with GEM's Spatial Adapter's extra columns uses it): the
    kernel's path gives the gather path's output and input, weight, extra-weight and bias gradients (the bias on
    the weight's columns only; the weights' gradients in their dtype), and builds no reversed table."""
    grid, batch, _, x, _ = _case(90, 24, 16, seed=3)
    g = torch.Generator().manual_seed(4)
    weight = (torch.randn(16, 3, 3, 3, 24, generator=g) / 8).to(DEVICE, weight_dtype)
    extra = (torch.randn(8, 3, 3, 3, 24, generator=g) / 8).to(DEVICE, weight_dtype)
    bias = torch.randn(16, generator=g).to(DEVICE)  # float32, as the CPE's trainable bias
    dy = torch.randn(len(x), 24, generator=g).to(DEVICE, DTYPE)

    def run(use_kernel: bool):
        monkeypatch.setattr(gather_conv, "_triton_for", lambda feat: kernels if use_kernel else None)
        point = Point(grid_coord=grid.to(DEVICE), batch=batch.to(DEVICE), feat=x)
        leaves = [t.clone().requires_grad_() for t in (x, weight, extra, bias)]
        out = gather_conv.gather_submconv(point, *leaves)
        out.backward(dy)
        return [out, *(t.grad for t in leaves)], "reversed_neighbour_tables" in point

    (got, built_reversed), (expected, built_reversed_before) = run(True), run(False)
    assert not built_reversed and built_reversed_before
    unbiased = gather_conv.gather_submconv(Point(grid_coord=grid.to(DEVICE), batch=batch.to(DEVICE), feat=x), x,
                                           weight, extra)
    torch.testing.assert_close(expected[0][:, 16:], unbiased[:, 16:])  # no bias on the extra columns
    torch.testing.assert_close(expected[0][:, :16].double(), unbiased[:, :16].double() + bias.double(),
                               rtol=0, atol=2e-3 * unbiased.abs().max().item())
    torch.testing.assert_close(expected[4].double(), dy[:, :16].double().sum(0), rtol=1e-4, atol=1e-3)
    assert got[2].dtype == got[3].dtype == weight_dtype
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b.double(), rtol=0, atol=2e-3 * b.abs().max().item())


@pytest.mark.skipif(not CUDA, reason="the dispatch to the kernel is for CUDA half features")
def test_cuda_half_features_take_the_kernel_and_float32_does_not():
    assert gather_conv._triton_for(torch.zeros(1, device="cuda", dtype=torch.float16)) is not None
    assert gather_conv._triton_for(torch.zeros(1, device="cuda")) is None


@pytest.mark.skipif(not CUDA, reason="compiled variants exist on CUDA only")
def test_a_new_point_count_compiles_no_new_variant(kernels):
    """Triton specialises integer arguments on divisibility by 16; the point count changes every batch, so the
    kernels take it unspecialised: 64, 65 and 80 sites run one compiled forward."""
    compiled, *_ = kernels._gather_matmul_kernel.device_caches[torch.cuda.current_device()]
    counts = []
    for sites in (64, 65, 80):
        x = torch.randn(sites, 16, device="cuda", dtype=torch.float16)
        table = torch.randint(0, sites + 1, (sites, 27), device="cuda")
        kernels.gather_matmul(x, table, torch.randn(16, 27, 16, device="cuda", dtype=torch.float16), transposed=False)
        counts.append(len(compiled))
    assert counts[0] == counts[1] == counts[2]


def test_evaluation_keeps_the_rows_until_a_weight_changes(kernels, monkeypatch):
    """With autograd off and an owner, the cast and concatenated rows are made once and reused; an in-place write
    to the extra rows' source makes them again; the result equals the conv's without the memo."""
    grid, batch, _, x, _ = _case(90, 24, 16, seed=8)
    g = torch.Generator().manual_seed(9)
    weight = (torch.randn(16, 3, 3, 3, 24, generator=g) / 8).to(DEVICE, WIDE)
    extra = (torch.randn(8, 3, 3, 3, 24, generator=g) / 8).to(DEVICE, WIDE)
    made = []
    rows = gather_conv._rows
    monkeypatch.setattr(gather_conv, "_rows", lambda *args: made.append(1) or rows(*args))
    monkeypatch.setattr(gather_conv, "_triton_for", lambda feat: kernels)
    owner = torch.nn.Module()

    def conv(with_owner: bool = True):
        point = Point(grid_coord=grid.to(DEVICE), batch=batch.to(DEVICE), feat=x)
        with torch.no_grad():
            return gather_conv.gather_submconv(point, x, weight, extra, owner=owner if with_owner else None)

    first, second = conv(), conv()
    assert len(made) == 1 and torch.equal(first, second)
    extra.mul_(2)
    again = conv()
    assert len(made) == 2 and torch.equal(again, conv(with_owner=False))
