"""``base + relu(a) @ W^T + b`` as Triton kernels (GEM's Spatial Adapter after its conv) against the torch ops, forward
and every gradient: on CUDA with half ``a`` where there is one, else on CPU in float32 through Triton's interpreter
(conftest turns it on)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from peftbench.backbone import relu_linear  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
A_DTYPES = [torch.float16, torch.bfloat16] if CUDA else [torch.float32]


@pytest.fixture(scope="module")
def kernels():
    import peftbench.backbone.triton_relu_linear as module
    return module


def _case(rows: int, r: int, cols: int, dtype: torch.dtype, seed: int):
    """``a`` as the last r columns of a wider conv output (strided rows), with exact zeros among its values."""
    g = torch.Generator().manual_seed(seed)
    conv_out = torch.randn(rows, cols + r, generator=g)
    conv_out[::7, -r:] = 0.0  # the ReLU's gradient at 0 is 0, as torch's
    a = conv_out.to(DEVICE, dtype)[:, cols:].requires_grad_()
    base = torch.randn(rows, cols, generator=g).to(DEVICE).requires_grad_()
    weight = (torch.randn(cols, r, generator=g) / 4).to(DEVICE).requires_grad_()
    bias = torch.randn(cols, generator=g).to(DEVICE).requires_grad_()
    return base, a, weight, bias


# rows: 150 = three tiles of 64, the last partial; r: 32, 8 (padded to 16), 1 (GEM's r = 1); cols: 48 (one
# partial column tile), 160 (three, the last partial: the input gradient loops over them)
@pytest.mark.parametrize("a_dtype", A_DTYPES)
@pytest.mark.parametrize("rows, r, cols, with_bias", [(150, 32, 48, True), (150, 8, 160, False), (70, 1, 16, True)])
@pytest.mark.parametrize("programs", [264, 2])  # one program a row tile; two programs summing two tiles each
def test_forward_and_gradients_equal_the_torch_ops(kernels, monkeypatch, rows, r, cols, with_bias, a_dtype,
                                                   programs):
    monkeypatch.setattr(kernels, "PROGRAMS", programs)
    base, a, weight, bias = _case(rows, r, cols, a_dtype, seed=rows + r + cols)
    bias_arg = bias if with_bias else None
    got = kernels.ReluLinearAdd.apply(base, a, weight, bias_arg)
    dy = torch.randn(rows, cols, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    grads = torch.autograd.grad(got, (base, a, weight) + ((bias,) if with_bias else ()), dy)

    leaves = [t.detach().double().requires_grad_() for t in (base, a, weight, bias)]
    expected = leaves[0] + torch.relu(leaves[1]) @ leaves[2].T + (leaves[3] if with_bias else 0)
    expected_grads = torch.autograd.grad(expected, leaves[:4] if with_bias else leaves[:3], dy.double())

    assert got.dtype == torch.float32 and got.shape == (rows, cols)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert grads[1].dtype == a_dtype and grads[2].dtype == torch.float32
    half = a_dtype != torch.float32  # d_a rounded to a's dtype
    for name, value, want in zip(("base", "a", "weight", "bias"), grads, expected_grads):
        tolerance = 8e-3 * want.abs().max().item() if half and name == "a" else 1e-4
        torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=tolerance, msg=name)
    assert (grads[1][::7] == 0).all()  # where a was 0


def test_no_rows(kernels):
    base, a, weight, bias = _case(10, 4, 16, A_DTYPES[0], 0)
    base, a = base[:0], a[:0]
    got = kernels.ReluLinearAdd.apply(base, a, weight, bias)
    d_base, d_a, d_weight, d_bias = torch.autograd.grad(got.sum(), (base, a, weight, bias))
    assert got.shape == (0, 16) and d_a.shape == (0, 4)
    assert not d_weight.any() and not d_bias.any()


@pytest.mark.skipif(not CUDA, reason="the kernels take CUDA inputs only")
def test_cuda_takes_the_kernels(kernels, monkeypatch):
    calls = []
    monkeypatch.setattr(kernels.ReluLinearAdd, "apply", lambda *args: calls.append(args) or args[0])
    base, a, weight, bias = _case(20, 4, 16, torch.float16, 0)
    relu_linear.fused_relu_linear_add(base, a, weight, bias)
    assert len(calls) == 1


def test_cpu_leaves_it_to_the_caller():
    base, a, weight, bias = (t.cpu() for t in _case(20, 4, 16, A_DTYPES[0], 0))
    assert relu_linear.fused_relu_linear_add(base, a, weight, bias) is None


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_spatial_adapter_sum_on_the_kernels_equals_its_output_added(kernels, monkeypatch, out_dtype):
    """GEM's Spatial Adapter hands the kernels its conv's extra columns, up-projection and bias (on CPU the kernels
    made to take CPU tensors, through the interpreter); with ``out`` in another dtype than ``x`` it keeps its ops."""
    import sys

    from peftbench.registry import get_method

    taken = []
    monkeypatch.setattr(relu_linear, "_kernels_for", lambda *args: taken.append(1) or kernels)
    adapter = sys.modules[get_method("gem").__module__].SpatialAdapter(16, 4, 3, "stage0", bias=True).to(DEVICE)
    torch.nn.init.normal_(adapter.up.weight)
    torch.nn.init.normal_(adapter.up.bias)
    g = torch.Generator().manual_seed(0)
    conv_out, x = torch.randn(30, 4, generator=g).to(DEVICE), torch.randn(30, 16, generator=g).to(DEVICE)
    out = torch.randn(30, 16, generator=g).to(DEVICE, out_dtype)
    got = adapter.add_after_conv(None, conv_out, x, out)
    expected = out + adapter.after_conv(None, conv_out, x)
    assert bool(taken) == (out_dtype == x.dtype) and got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_residual_sum_in_the_kernel_equals_the_add_after_it(kernels):
    """``residual + (base + relu(a) @ W^T + b)`` in the forward kernel: the same float32 sums in the same order as the
    kernel without it and the add after it, and the residual's gradient is y's."""
    base, a, weight, bias = _case(150, 8, 48, A_DTYPES[0], seed=7)
    residual = torch.randn(base.shape, generator=torch.Generator().manual_seed(8)).to(DEVICE).requires_grad_()
    got = kernels.ReluLinearAdd.apply(base, a, weight, bias, residual)
    unfused = residual + kernels.ReluLinearAdd.apply(base, a, weight, bias)
    assert torch.equal(got, unfused)
    dy = torch.randn(got.shape, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    leaves = (base, a, weight, bias, residual)
    for ours, want in zip(torch.autograd.grad(got, leaves, dy), torch.autograd.grad(unfused, leaves, dy)):
        torch.testing.assert_close(ours, want, rtol=0, atol=0)


@pytest.mark.parametrize("fold", [0, 1])
def test_block_folds_the_residual_into_the_spatial_adapter(kernels, monkeypatch, micro_config, scene_batch, fold):
    """``block.FOLD_RESIDUAL``: GEM's Spatial Adapter (on the kernels: CPU tensors through the interpreter) adds the
    block's input in its kernel, and the add after it is gone: the same logits and gradients, one autograd node
    fewer a block."""
    import collections

    from peftbench.backbone import block as block_module
    from peftbench.model import Segmentor
    from peftbench.registry import build_method

    if CUDA:
        pytest.skip("the micro model's batch is on CPU")
    monkeypatch.setattr(relu_linear, "_kernels_for", lambda base, a, weight: kernels)
    torch.manual_seed(0)
    model = Segmentor(micro_config, 5)
    build_method("sa").apply(model)
    for name, param in model.named_parameters():
        if name.endswith("up.weight") or name.endswith("up.bias"):
            torch.nn.init.normal_(param, std=0.1)
    inputs = {k: v for k, v in scene_batch.items() if k != "segment"}

    def run(switch):
        monkeypatch.setattr(block_module, "FOLD_RESIDUAL", switch)
        model.zero_grad()
        logits = model(inputs, torch.Generator().manual_seed(0))
        nodes, seen, stack = collections.Counter(), set(), [logits.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is not None and fn not in seen:
                seen.add(fn)
                nodes[type(fn).__name__] += 1
                stack.extend(next_fn for next_fn, _ in fn.next_functions)
        logits.square().sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, nodes

    logits, grads, nodes = run(fold)
    ref_logits, ref_grads, ref_nodes = run(0)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-6, atol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    blocks = len(list(model.backbone.encoder_blocks()))
    assert ref_nodes["AddBackward0"] - nodes["AddBackward0"] == (blocks if fold else 0)
