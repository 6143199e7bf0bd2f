"""The Triton LayerNorm kernels against torch's LayerNorm: on CUDA where there is one, else on CPU
through Triton's interpreter (conftest turns it on before Triton is imported)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from peftbench.backbone import layer_norm  # noqa: E402


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def triton_layer_norm():
    import peftbench.backbone.triton_layer_norm as module
    return module


def _inputs(rows: int, cols: int, dtype=torch.float32):
    generator = torch.Generator().manual_seed(rows * 1000 + cols)
    x = (torch.randn(rows, cols, generator=generator) * 3 + 1).to(dtype)
    weight = torch.randn(cols, generator=generator)
    bias = torch.randn(cols, generator=generator)
    return x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE)


@pytest.mark.parametrize("rows, cols", [(150, 48), (37, 20), (64, 96), (3, 7)])
def test_values_and_gradients_equal_torch_layer_norm(triton_layer_norm, rows, cols):
    # 150 x 48: three tiles of 64 rows, the last one partial; 20 and 7 columns pad to 32 and 8.
    x, weight, bias = _inputs(rows, cols)
    dy = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ours = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = triton_layer_norm.TritonLayerNorm.apply(*ours, 1e-5, torch.float32)
    out.backward(dy)
    exact = [t.double().requires_grad_() for t in (x, weight, bias)]
    expected = F.layer_norm(exact[0], (cols,), exact[1], exact[2], 1e-5)
    expected.backward(dy.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-5 * expected.abs().max().item())
    for got, want in zip(ours, exact):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=0, atol=2e-5 * want.grad.abs().max().item())


def test_frozen_affine_gets_no_gradient_and_input_gradient_is_unchanged(triton_layer_norm):
    x, weight, bias = _inputs(100, 48)
    x.requires_grad_()
    out = triton_layer_norm.TritonLayerNorm.apply(x, weight, bias, 1e-5, torch.float32)
    out.square().sum().backward()
    reference = x.detach().clone().requires_grad_()
    F.layer_norm(reference, (48,), weight, bias, 1e-5).square().sum().backward()
    assert weight.grad is None and bias.grad is None
    torch.testing.assert_close(x.grad, reference.grad, rtol=0, atol=1e-5 * reference.grad.abs().max().item())


def test_output_dtype_follows_cuda_autocast_and_plain_torch(triton_layer_norm):
    # LayerNorm is on CUDA autocast's float32 list: a half input gives float32 under autocast, half without.
    x, weight, bias = _inputs(40, 24, torch.float16)
    with torch.autocast(DEVICE, dtype=torch.float16 if DEVICE == "cuda" else torch.bfloat16):
        under_autocast = layer_norm.triton_layer_norm(x, weight, bias, 1e-5)
        if DEVICE == "cuda":
            assert F.layer_norm(x, (24,), weight, bias, 1e-5).dtype == torch.float32
    plain = layer_norm.triton_layer_norm(x, weight, bias, 1e-5)
    assert under_autocast.dtype == torch.float32
    assert plain.dtype == torch.float16
    expected = F.layer_norm(x.float(), (24,), weight, bias, 1e-5)
    torch.testing.assert_close(under_autocast, expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    torch.testing.assert_close(plain, expected.half(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    DEVICE != "cuda", reason="Triton's interpreter truncates to bfloat16; GPUs round to nearest"))])
def test_linear_input_is_written_in_the_autocast_dtype_with_the_cast_s_numbers(triton_layer_norm, dtype):
    """What the linear after it reads is the float32 output cast to the autocast dtype, and the input's and
    affine gradients from a gradient in that dtype are those through the cast: bit for bit through Triton's
    interpreter; on a GPU the two compiled kernels may contract multiply-adds differently (seen on an H200), so
    to float32 rounding, within each dtype's default tolerance."""
    x, weight, bias = _inputs(150, 48)
    dy = torch.randn(150, 48, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    results = []
    for linear_input in (False, True):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        with torch.autocast(DEVICE, dtype=dtype):
            out = layer_norm.triton_layer_norm(*leaves, 1e-5, linear_input)
            read = out.to(dtype)  # what an autocast linear casts its input to
        read.backward(dy)
        assert out.dtype == (dtype if linear_input else torch.float32)
        results.append([read] + [t.grad for t in leaves])
    for cast, direct in zip(*results):
        if DEVICE == "cuda":
            torch.testing.assert_close(direct, cast)  # 1e-3 (float16) / 1.6e-2 (bfloat16) / 1.3e-6 (float32)
        else:
            assert torch.equal(direct, cast)
    plain = layer_norm.triton_layer_norm(x, weight, bias, 1e-5, linear_input=True)
    assert plain.dtype == torch.float32  # no autocast: the input's dtype


def test_no_rows(triton_layer_norm):
    x, weight, bias = (t.requires_grad_() for t in _inputs(0, 48))
    out = triton_layer_norm.TritonLayerNorm.apply(x, weight, bias, 1e-5, torch.float32)
    out.sum().backward()
    assert out.shape == (0, 48) and torch.equal(weight.grad, torch.zeros(48, device=DEVICE))


@pytest.mark.skipif(DEVICE != "cuda", reason="the kernels are taken on CUDA only")
def test_narrow_cuda_rows_take_the_kernels_and_wide_rows_torch():
    narrow, wide = layer_norm.LayerNorm(48).cuda(), layer_norm.LayerNorm(layer_norm.TRITON_MAX_CHANNELS + 1).cuda()
    x = torch.randn(10, 48, device="cuda", requires_grad=True)
    x_wide = torch.randn(10, layer_norm.TRITON_MAX_CHANNELS + 1, device="cuda", requires_grad=True)
    assert type(narrow(x).grad_fn).__name__ == "TritonLayerNormBackward"
    assert type(wide(x_wide).grad_fn).__name__ == "NativeLayerNormBackward0"
