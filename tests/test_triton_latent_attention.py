"""GEM's Context Adapter core as Triton kernels (``triton_latent_attention``) against its per-scene definition
(``tests.test_latent_attention._per_point``, float64): on CUDA where there is one, else on CPU through Triton's
interpreter (conftest turns it on)."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("triton")

from peftbench.backbone import latent_attention  # noqa: E402
from peftbench.registry import get_method  # noqa: E402
from tests.test_gem_precision import _Point  # noqa: E402
from tests.test_latent_attention import _per_point  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def kernels(monkeypatch):
    import peftbench.backbone.triton_latent_attention as module
    # 16-row tiles, at most 4 programs: each sums 2-3 tiles (the running sums rescaled between them), the last
    # tile partial or past the rows; the combines load 2 programs' partial sums at once, so 3-4 programs take two
    # loads, the last one half past the programs where there are 3
    monkeypatch.setattr(module, "PROGRAMS", 4)
    monkeypatch.setattr(module, "BLOCK_ROWS", 16)
    monkeypatch.setattr(module, "PARTS_BLOCK", 2)
    return module


def _inputs(counts: list[int], m: int, r: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    k, v, q = (torch.randn(n, r, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    latents = torch.randn(len(counts), m, r, generator=g, dtype=torch.float64, requires_grad=True)
    return batch, k, v, q, latents, g


def test_buffers_are_one_allocation_of_disjoint_views_each_at_a_16_byte_boundary(kernels):
    """Triton specializes a pointer on 16-byte alignment: a view at another offset would compile another variant."""
    shapes = [(3,), (5, 2), (1,), (2, 3, 2)]
    views = kernels._buffers(torch.device(DEVICE), shapes)
    assert [tuple(v.shape) for v in views] == shapes
    assert all(v.is_contiguous() and v.dtype == torch.float32 for v in views)
    assert all(v.data_ptr() % 16 == 0 for v in views)
    spans = sorted((v.data_ptr(), v.data_ptr() + 4 * v.numel()) for v in views)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    assert len({v.untyped_storage().data_ptr() for v in views}) == 1


# one scene; three scenes, one of a single point; ranks 32, 5 (padded to 16) and 8; tiles cut mid-scene; ten
# scenes, the first tile's nine in three windows of four scenes
@pytest.mark.parametrize("counts, m, r", [([70], 4, 32), ([50, 1, 90], 3, 5), ([33, 120], 4, 8),
                                          ([2, 1, 3, 1, 2, 1, 2, 3, 1, 20], 4, 8)])
@pytest.mark.parametrize("with_v", [False, True])
@pytest.mark.parametrize("with_q", [False, True])
@pytest.mark.parametrize("read_updated", [False, True])
def test_kernels_equal_the_definition(kernels, counts, m, r, with_v, with_q, read_updated):
    """Outputs, updated latents and every input's gradient, with a gradient on both outputs."""
    batch, k, v, q, latents, g = _inputs(counts, m, r, seed=len(counts) + r)
    v, q = (v if with_v else None), (q if with_q else None)
    w_out = torch.randn(len(batch), r, generator=g, dtype=torch.float64)
    w_upd = torch.randn(latents.shape, generator=g, dtype=torch.float64)
    wanted = [t for t in (k, v, q, latents) if t is not None]
    out, upd = _per_point(k, k if v is None else v, q, latents, batch, 0.4, read_updated)
    ref = torch.autograd.grad((out * w_out).sum() + (upd * w_upd).sum(), wanted)

    as32 = [None if t is None else t.detach().float().to(DEVICE).requires_grad_() for t in (k, v, q, latents)]
    got_out, got_upd = latent_attention._KernelLatentAttention.apply(
        as32[0], as32[1], as32[2], as32[3].reshape(-1, r), batch.to(DEVICE), m, 0.4, read_updated, kernels)
    got_upd = got_upd.view(latents.shape)
    torch.testing.assert_close(got_out.double().cpu(), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_upd.double().cpu(), upd, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad((got_out * w_out.float().to(DEVICE)).sum() + (got_upd * w_upd.float().to(DEVICE)).sum(),
                              [t for t in as32 if t is not None])
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_kernels_take_rows_of_scenes_in_any_order(kernels):
    """A row tile scores only its scenes' latent columns, a window of whole scenes at a time (m = 3: five scenes,
    15 of 16 columns): ten scenes, their rows in order and shuffled (every tile then meets most scenes, and each
    program's tiles revisit them): the same outputs and gradients as the definition's, row for row."""
    counts = [2, 1, 3, 1, 2, 1, 2, 3, 1, 20]
    batch, k, v, q, latents, g = _inputs(counts, 3, 8, seed=11)
    w_out = torch.randn(len(batch), 8, generator=g, dtype=torch.float64)
    w_upd = torch.randn(latents.shape, generator=g, dtype=torch.float64)
    out, upd = _per_point(k, v, q, latents, batch, 0.4, True)
    ref = torch.autograd.grad((out * w_out).sum() + (upd * w_upd).sum(), [k, v, q, latents])
    for order in (torch.arange(len(batch)), torch.randperm(len(batch), generator=g)):
        rows = [t.detach()[order].float().to(DEVICE).requires_grad_() for t in (k, v, q)]
        lat = latents.detach().float().to(DEVICE).requires_grad_()
        got_out, got_upd = latent_attention._KernelLatentAttention.apply(
            *rows, lat.reshape(-1, 8), batch[order].to(DEVICE), 3, 0.4, True, kernels)
        torch.testing.assert_close(got_out.double().cpu(), out[order], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got_upd.view(upd.shape).double().cpu(), upd, rtol=1e-5, atol=1e-5)
        got = torch.autograd.grad((got_out * w_out[order].float().to(DEVICE)).sum()
                                  + (got_upd.view(upd.shape) * w_upd.float().to(DEVICE)).sum(), [*rows, lat])
        for a, b in zip(got, [t[order] for t in ref[:3]] + [ref[3]]):
            torch.testing.assert_close(a.double().cpu(), b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_kernels_compile_the_same_variants_for_3_scenes_and_24(kernels, monkeypatch):
    """No compile-time constant comes from the scenes' count: a paper-shaped pass holds 16-24 scenes (Mix3D), and the
    latent columns' tile width did, so a pass of 16 compiled a variant of every kernel mid-trial (H100, session 46: a
    10.7 s step, most likely so)."""
    launched: dict[int, set] = {}
    real_launch = kernels.launch

    def recording(kernel, grid, *args, **constants):
        launched.setdefault(scenes, set()).add((kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__,
                                                tuple(sorted(constants.items()))))
        return real_launch(kernel, grid, *args, **constants)
    monkeypatch.setattr(kernels, "launch", recording)
    for scenes in (3, 24):
        batch, k, v, _, latents, _ = _inputs([3] * scenes, 4, 8, seed=scenes)
        as32 = [t.detach().float().to(DEVICE).requires_grad_() for t in (k, v, latents)]
        out, upd = latent_attention._KernelLatentAttention.apply(as32[0], as32[1], None, as32[2].reshape(-1, 8),
                                                                 batch.to(DEVICE), 4, 0.5, True, kernels)
        torch.autograd.grad(out.sum() + upd.sum(), as32)
    assert len(launched[3]) == 7 and launched[3] == launched[24]


def test_kernels_without_a_gradient_on_the_latents_and_on_projection_slices(kernels):
    """The last block (only the read-out used: no incoming latent gradient), keys and values read in place as
    column slices of one projection, as the Context Adapter passes them."""
    batch, k, v, _, latents, g = _inputs([40, 25], 4, 8, seed=3)
    out, _ = _per_point(k, v, None, latents, batch, 0.5, True)
    ref = torch.autograd.grad(out.sum(), [k, v, latents])
    projection = torch.cat([k, v], dim=1).detach().float().to(DEVICE).requires_grad_()
    lat = latents.detach().float().to(DEVICE).requires_grad_()
    keys, values = projection.split(8, dim=1)
    got_out, _ = latent_attention._KernelLatentAttention.apply(keys, values, None, lat.reshape(-1, 8),
                                                               batch.to(DEVICE), 4, 0.5, True, kernels)
    torch.testing.assert_close(got_out.double().cpu(), out, rtol=1e-5, atol=1e-5)
    d_projection, d_lat = torch.autograd.grad(got_out.sum(), [projection, lat])
    torch.testing.assert_close(d_projection.double().cpu(), torch.cat(ref[:2], dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d_lat.double().cpu(), ref[2], rtol=1e-5, atol=1e-5)


def test_scores_far_apart_across_programs_do_not_overflow(kernels):
    """The last program's keys score ~110 above the others': the combine must shift every program's partial
    sums by the largest column max of all programs (exp(110) overflows float32)."""
    batch, k, v, _, latents, _ = _inputs([60], 4, 8, seed=7)
    with torch.no_grad():
        k[48:] = 80 * latents[0, 0] / latents[0, 0].norm()  # rows 48-59: the fourth 16-row program
    out, upd = _per_point(k, v, None, latents, batch, 0.5, True)
    ref = torch.autograd.grad(out.sum() + upd.sum(), [k, v, latents])
    as32 = [t.detach().float().to(DEVICE).requires_grad_() for t in (k, v, latents)]
    got_out, got_upd = latent_attention._KernelLatentAttention.apply(
        as32[0], as32[1], None, as32[2].reshape(-1, 8), batch.to(DEVICE), 4, 0.5, True, kernels)
    torch.testing.assert_close(got_out.double().cpu(), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_upd.view(upd.shape).double().cpu(), upd, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(got_out.sum() + got_upd.sum(), as32)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double().cpu(), b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("proj", ["shared_qk", "shared_kv", "qkv+up"])
@pytest.mark.parametrize("read", ["updated", "previous"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_base", [False, True])
def test_context_adapter_as_one_node_equals_its_ops(kernels, monkeypatch, proj, read, dtype, with_base):
    """Two chained Context Adapters (the latents flow from the first to the second) on the kernels as one
    autograd node each (``projected_latent_attention``) against the same adapters on the torch core: outputs,
    latents, and the gradients of the input and of every weight. ``with_base``: each adapter adds its output to
    its input itself (the block's ``adds_to_base``; on the kernels, in the read-out kernel). ``PROJECT_IN_KERNEL``:
    the projections and h's gradient in the kernels with one read-out, matmuls with the other (every projection,
    dtype and ``base`` case either way: the interpreter's time halved); in training only, or (``base`` cases,
    ``PROJECT_IN_KERNEL`` 2) in evaluation too.
    The ``base`` cases set the other ``PROJECT_*`` settings: the projections as tf32x3 products (on CUDA; Triton's
    interpreter computes every product in float32), held to the same tolerances, in 32-channel tiles (three, the
    last partial) by 8 warps."""
    # in training with the updated latents read, in evaluation too where the adapters add to a base
    in_kernel = (2 if with_base else 1) if read == "updated" else 0
    monkeypatch.setattr(latent_attention, "PROJECT_IN_KERNEL", in_kernel)
    projection_options = ("tf32x3", 32, 8) if with_base else ("ieee", 64, 4)
    for name, value in zip(("PROJECT_TF32X3", "PROJECT_BLOCK_C", "PROJECT_WARPS"),
                           (int(with_base), *projection_options[1:])):
        monkeypatch.setattr(kernels, name, value)
    gem = sys.modules[get_method("gem").__module__]
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([45, 30])).to(DEVICE)
    torch.manual_seed(0)
    bank = gem.LatentBank(4, 8, 0.5)
    adapters = [gem.ContextAdapter(80, 8, proj, None, read) for _ in range(2)]  # 80: 64 + 16 or 3 x 32 channels
    modules = torch.nn.ModuleList([bank, *adapters]).to(DEVICE)
    for adapter in adapters:
        torch.nn.init.normal_(adapter.up.weight, std=0.3)
    h = torch.randn(75, 80, device=DEVICE).to(dtype).requires_grad_()
    w = torch.randn(75, 80, device=DEVICE)

    def chain(take):
        monkeypatch.setattr(gem, "kernels_take", take)
        point = _Point(batch, 2)
        bank(point)
        x, nodes = h, set()
        for adapter in adapters:
            y = adapter(point, x, base=x) if with_base else adapter(point, x)
            # the output and the updated latents straight from the adapter's node (no view node around it)
            nodes.update(type(t.grad_fn).__name__ for t in (y, point.scene_state["gem_latents"]))
            x = y if with_base else x + y
        return x, point.scene_state["gem_latents"], nodes

    def run(take):
        x, latents, nodes = chain(take)
        loss = (x.float() * w).sum() + latents.sum()
        return x, latents, torch.autograd.grad(loss, [h, *modules.parameters()]), nodes

    projected, forward = [], kernels.forward  # per kernels.forward call: were the projections in the kernel?

    def recording_forward(*args, project=None, **kwargs):
        projected.append(project is not None)
        return forward(*args, project=project, **kwargs)

    monkeypatch.setattr(kernels, "forward", recording_forward)
    options, launch = set(), kernels.launch  # the projections' products, tiles and warps as the kernels were given

    def recording_launch(kernel, grid, *args, **constexprs):
        if constexprs.get("PROJECT") or constexprs.get("D_H"):
            options.add(tuple(constexprs[name] for name in ("PRECISION", "BLOCK_C", "num_warps")))
        return launch(kernel, grid, *args, **constexprs)

    monkeypatch.setattr(kernels, "launch", recording_launch)
    got = run(lambda points, columns: kernels)
    monkeypatch.setattr(latent_attention, "TRITON_LATENT", 0)  # on CUDA the core would take the kernels too
    ref = run(lambda points, columns: None)
    monkeypatch.setattr(latent_attention, "TRITON_LATENT", 1)
    # evaluation: the projections passed concatenated (kept by no_grad_memo), by a matmul; bfloat16 rounds the sums of
    # a differently ordered product apart by a unit or two in the last place here and there (4.9e-4 at ~0.05 seen)
    with torch.no_grad():
        evaluated = chain(lambda points, columns: kernels)[0]
    same = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 or read != "updated" else dict(rtol=2**-7, atol=1e-3)
    torch.testing.assert_close(evaluated, got[0], **same)
    assert projected == [in_kernel > 0] * 2 + [in_kernel == 2] * 2
    assert options == ({projection_options} if read == "updated" else set())
    assert got[3] == {"_ProjectedKernelLatentAttentionBackward"} and not ref[3] & got[3]
    assert got[0].dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got[0], ref[0], **tol)
    torch.testing.assert_close(got[1], ref[1], **tol)
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=tol["rtol"], atol=tol["atol"] * b.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernels take the core on CUDA only")
def test_cuda_dispatch_takes_the_kernels_and_the_switch_turns_them_off(monkeypatch):
    batch, k, v, q, latents, _ = _inputs([30, 20], 4, 8, seed=5)
    args = [t.detach().float().cuda().requires_grad_() for t in (k, v, q, latents)]
    out, _ = latent_attention.scene_latent_attention(*args, batch.cuda(), 0.5)
    assert type(out.grad_fn).__name__ == "_KernelLatentAttentionBackward"
    monkeypatch.setattr(latent_attention, "TRITON_LATENT", 0)
    torch_out, _ = latent_attention.scene_latent_attention(*args, batch.cuda(), 0.5)
    assert type(torch_out.grad_fn).__name__ == "_LatentAttentionBackward"
    torch.testing.assert_close(out, torch_out, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(latent_attention, "TRITON_LATENT", 1)
    many = _inputs([3] * 40, 4, 8, seed=6)  # 160 latent columns: any number of scenes
    many_args = [t.detach().float().cuda().requires_grad_() for t in many[1:5]]
    many_out, _ = latent_attention.scene_latent_attention(*many_args, many[0].cuda(), 0.5)
    assert type(many_out.grad_fn).__name__ == "_KernelLatentAttentionBackward"
    monkeypatch.setattr(latent_attention, "KERNEL_MAX_LATENTS", 3)  # 4 latents a scene: too many
    wide_out, _ = latent_attention.scene_latent_attention(*args, batch.cuda(), 0.5)
    assert type(wide_out.grad_fn).__name__ == "_LatentAttentionBackward"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the micro model's batch is on CPU")
@pytest.mark.parametrize("on_kernels", [True, False])
def test_evaluation_folds_the_residual_into_the_context_adapter(kernels, monkeypatch, micro_config, scene_batch,
                                                                on_kernels):
    """``block.FOLD_RESIDUAL`` in evaluation: GEM's Context Adapter adds the block's input in its read-out kernel
    (CPU tensors through the interpreter) or its own ops, and its Spatial Adapter in its ReLU-linear kernel: the same
    logits as the adds after them, and exactly one such kernel launch of each a block. Training keeps the adds (the
    drop path, the backward)."""
    from peftbench.backbone import block as block_module
    from peftbench.backbone import relu_linear
    from peftbench.model import Segmentor
    from peftbench.registry import build_method
    import peftbench.backbone.triton_relu_linear as relu_kernels

    gem = sys.modules[get_method("gem").__module__]
    if on_kernels:
        monkeypatch.setattr(gem, "kernels_take", lambda points, latents_per_scene: kernels)
        monkeypatch.setattr(relu_linear, "_kernels_for", lambda base, a, weight: relu_kernels)
    folded = []
    for module in (kernels, relu_kernels):
        launch = module.launch

        def recording(kernel, grid, *args, _launch=launch, **constexprs):
            folded.append(constexprs.get("HAS_RESIDUAL", False))
            return _launch(kernel, grid, *args, **constexprs)
        monkeypatch.setattr(module, "launch", recording)
    torch.manual_seed(0)
    model = Segmentor(micro_config, 5)
    build_method("gem").apply(model)
    for name, param in model.named_parameters():
        if param.requires_grad and not param.any():
            torch.nn.init.normal_(param, std=0.1)
    inputs = {k: v for k, v in scene_batch.items() if k != "segment"}

    def logits(fold: int, train: bool = False) -> torch.Tensor:
        monkeypatch.setattr(block_module, "FOLD_RESIDUAL", fold)
        folded.clear()
        with torch.set_grad_enabled(train):
            return model.train(train)(inputs, torch.Generator().manual_seed(0)).detach()

    blocks = len(list(model.backbone.encoder_blocks()))
    got = logits(1)
    assert sum(folded) == (2 * blocks if on_kernels else 0)
    torch.testing.assert_close(got, logits(0), rtol=1e-6, atol=1e-6)
    logits(1, train=True)
    assert sum(folded) == (blocks if on_kernels else 0)  # the Spatial Adapter's only: it has no drop path
