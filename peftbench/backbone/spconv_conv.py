"""The ``spconv`` backend of ``SubMConv3d``: spconv's implicit-GEMM forward, our own backward.

spconv's backward always computes both gradients with its own kernels. Ours:

* input gradient: ``d in[q] = sum_o W_o^T d out[q - o]`` on a submanifold, i.e. spconv's forward
  conv of the output gradient over the same index pairs with the weight mirrored (offset o ->
  -o) and its channels swapped; nothing when the input needs no gradient;
* weight gradient: only when the weight trains (GEM's Spatial Adapter, full fine-tuning), as one
  matmul per chunk of sites over their gathered k^3 neighbours (``gather_conv``): a wide GEMM
  instead of spconv's split-K reduction over all sites; nothing for a frozen weight (every PEFT
  method's CPE), where spconv computed and dropped it.

On CPU, spconv 2.3.8 has no backward of its own (and races on >1 thread), so this is also the
CPU path: both spconv calls run on one thread.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from peftbench.backbone.gather_conv import cached_neighbour_table, gathered_weight_grad
from peftbench.backbone.structure import Point

SPATIAL_PAD = 96  # reference ``sparsify(pad=96)``
# "spconv": a trainable weight's gradients by spconv's own backward (CUDA only; for comparison,
# scripts/conv_backward_bench.py); "gather": ours (module docstring)
WEIGHT_GRAD_BY = "gather"


@functools.lru_cache(maxsize=1)
def import_spconv() -> Any:
    """Import spconv once; on CPU-only torch patch its stream getter so it runs.

    spconv asks ``torch.cuda.current_stream()``, which asserts on CPU torch; stream 0 is what
    its CPU kernels ignore anyway (environment.md §3.1).
    """
    import spconv.pytorch as spconv_pt
    import spconv.pytorch.conv  # noqa: F401 - SparseConvolution (base class, takes device=)

    if not torch.cuda.is_available():
        from spconv.pytorch import cppcore, hash as sp_hash, ops

        def _no_stream() -> int:
            return 0

        for module in (cppcore, ops, sp_hash):
            if hasattr(module, "get_current_stream"):
                module.get_current_stream = _no_stream
    return spconv_pt


def sparse_conv_tensor(point: Point, feat: Tensor) -> Any:
    """The point's cached ``SparseConvTensor`` (reference ``sparsify``) carrying ``feat``.

    Cached as ``point["sparse_conv_feat"]``; ``replace_feature`` shares its indice dict,
    so spconv index pairs built by one conv are reused by the next with the same key.
    """
    spconv_pt = import_spconv()
    base = point.get("sparse_conv_feat")
    if base is None:
        grid_coord = point["grid_coord"]
        indices = torch.cat([point["batch"].unsqueeze(-1), grid_coord], dim=1).int()
        spatial_shape = (grid_coord.max(0).values + SPATIAL_PAD).tolist()
        # detached: the cached carrier must not pin the first caller's autograd graph
        base = spconv_pt.SparseConvTensor(feat.detach(), indices, spatial_shape, point.num_scenes)
        point["sparse_conv_feat"] = base
    return base.replace_feature(feat)


def keep_index_pairs(point: Point, out: Any) -> None:
    """Keep the index pairs a conv built for the level's next convs.

    spconv stores new pairs in a *copy* of the input's indice dict, on the output tensor only; we
    keep the output's features, so without this every conv of a level (CPE, GEM's SA) rebuilt its
    pairs (48 builds per Sonata-size GEM step, where the reference, passing its output on, has 5).
    """
    shared = point["sparse_conv_feat"].indice_dict
    if len(out.indice_dict) != len(shared):
        shared.update(out.indice_dict)


class SpconvRunner:
    """spconv's conv modules (index-pair logic only) for one indice key and kernel size.

    One module per (in, out) channel pair: the input gradient runs the swapped pair. Their
    weights live on "meta" (no memory); ours is passed to each call.
    """

    def __init__(self, indice_key: str | None, kernel_size: int) -> None:
        # Key includes k: spconv would otherwise reuse pairs of another kernel size.
        self.key = None if indice_key is None else f"{indice_key}:k{kernel_size}"
        self.kernel_size = kernel_size
        self.modules: dict[tuple[int, int], Any] = {}

    def __call__(self, point: Point, feat: Tensor, weight: Tensor, training: bool, autograd: bool = False) -> Tensor:
        """Bias-free conv of ``feat`` with KRSC ``weight`` (autograd through spconv only if asked)."""
        channels = (weight.shape[-1], weight.shape[0])
        if channels not in self.modules:
            # The base class (SubMConv3d = SparseConvolution(ndim 3, subm)) accepts device=.
            self.modules[channels] = import_spconv().conv.SparseConvolution(
                3, *channels, self.kernel_size, bias=False, subm=True, indice_key=self.key, device="meta")
        with _one_thread() if feat.device.type == "cpu" else contextlib.nullcontext(), \
                torch.set_grad_enabled(autograd and torch.is_grad_enabled()):
            # _conv_forward takes the weight explicitly (spconv 2.3): ours, shared, no copy.
            out = self.modules[channels]._conv_forward(training, sparse_conv_tensor(point, feat),
                                                       weight.to(feat.dtype), None)
        keep_index_pairs(point, out)
        return out.features


def spconv_submconv(runner: SpconvRunner, point: Point, feat: Tensor, weight: Tensor, training: bool) -> Tensor:
    """Bias-free submanifold conv of ``feat`` (N, in) with KRSC ``weight`` through spconv."""
    if feat.dtype == torch.bfloat16:  # spconv has no bf16 kernels (KeyError under bf16 autocast)
        feat = feat.float()
    if WEIGHT_GRAD_BY == "spconv" and weight.requires_grad and feat.is_cuda:
        return runner(point, feat, weight, training, autograd=True)
    return _SpconvConv.apply(feat, weight, lambda f, w: runner(point, f, w, training),
                             lambda: cached_neighbour_table(point, runner.kernel_size))


class _SpconvConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat: Tensor, weight: Tensor, run: Callable[[Tensor, Tensor], Tensor],  # type: ignore[override]
                table: Callable[[], Tensor]) -> Tensor:
        ctx.save_for_backward(feat if ctx.needs_input_grad[1] else None, weight)
        ctx.run, ctx.table = run, table
        return run(feat, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        feat, weight = ctx.saved_tensors
        grad = grad.contiguous()
        d_feat = d_weight = None
        if ctx.needs_input_grad[0]:
            d_feat = ctx.run(grad, weight.flip(1, 2, 3).transpose(0, 4).contiguous())  # KRSC [in, k, k, k, out]
        if ctx.needs_input_grad[1]:
            d_weight = gathered_weight_grad(feat, grad, ctx.table(), weight.shape).to(weight.dtype)
        return d_feat, d_weight, None, None


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch (and spconv's CPU kernels) on one thread; the old count restored after.

    Measured here: spconv 2.3.8's CPU kernels race with 2 threads (about 1 in 5 calls drops a
    contribution to a site); 1 thread is exact.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
