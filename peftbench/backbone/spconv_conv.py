"""The ``spconv`` backend of ``SubMConv3d``: spconv's implicit-GEMM forward, and a backward of
our own where spconv's does work that is thrown away.

spconv's backward always computes both gradients. For a frozen weight (every PEFT method's CPE)
the weight gradient is dropped, so ours computes only the input gradient, ``d in[q] = sum_o
W_o^T d out[q - o]`` on a submanifold: spconv's forward conv of the output gradient over the same
index pairs with the weight mirrored (offset o -> -o) and its channels swapped. A trainable
weight (GEM's Spatial Adapter, full fine-tuning) keeps spconv's backward on CUDA (faster than
gathered matmuls at every level on an H200, ``scripts/conv_backward_bench.py``); on CPU its weight
gradient is the gathered matmul of ``gather_conv``. spconv's CPU kernels run on one thread.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from peftbench.backbone.function_apply import apply
from peftbench.backbone.gather_conv import cached_neighbour_table, gathered_weight_grad
from peftbench.backbone.structure import Point

SPATIAL_PAD = 96  # reference ``sparsify(pad=96)``
# A trainable weight's gradients on CUDA: "spconv" (its own backward; measured faster on an H200
# at every level, scripts/conv_backward_bench.py) or "gather" (ours, the CPU path).
WEIGHT_GRAD_BY = "spconv"


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
    """The point's cached ``SparseConvTensor`` (reference ``sparsify``): the sites and the indice dict
    that keeps the level's index pairs; a conv call gives it its features (``replace_feature``).

    Cached as ``point["sparse_conv_feat"]``, built from the first caller's ``feat``, detached: the
    cached carrier must not pin the first caller's autograd graph.
    """
    spconv_pt = import_spconv()
    base = point.get("sparse_conv_feat")
    if base is None:
        grid_coord = point["grid_coord"]
        indices = torch.cat([point["batch"].unsqueeze(-1), grid_coord], dim=1).int()
        spatial_shape = [m + SPATIAL_PAD for m in point.grid_max()]
        base = spconv_pt.SparseConvTensor(feat.detach(), indices, spatial_shape, point.num_scenes)
        point["sparse_conv_feat"] = base
    return base


def keep_index_pairs(sites: Any, out: Any) -> None:
    """Keep the index pairs a conv built on ``sites`` for the level's next convs.

    spconv stores new pairs in a *copy* of the input's indice dict, on the output tensor only; we
    keep the output's features, so without this every conv of a level (CPE, GEM's SA) rebuilt its
    pairs (48 builds per Sonata-size GEM step, where the reference, passing its output on, has 5).
    """
    if len(out.indice_dict) != len(sites.indice_dict):
        sites.indice_dict.update(out.indice_dict)


def build_index_pairs(runner: "SpconvRunner", point: Point, training: bool) -> None:
    """The level's index pairs for ``runner``'s key, built now by a throwaway conv of 16 zero channels
    (spconv builds pairs inside its conv call; a level's real convs then find them)."""
    built = point.get("sparse_conv_feat")
    if runner.key is None or (built is not None and runner.key in built.indice_dict):
        return
    dtype = torch.float16 if point["grid_coord"].is_cuda else torch.float32
    feat = torch.zeros(len(point["grid_coord"]), 16, dtype=dtype, device=point["grid_coord"].device)
    sites = sparse_conv_tensor(point, feat)
    k = runner.kernel_size
    with torch.no_grad():
        runner(sites, feat, feat.new_zeros(16, k, k, k, 16), training)


# (in, out, kernel, dtype, device) whose spconv backward has been tuned (``SpconvRunner.tune_backward``)
_BACKWARD_TUNED: set[tuple] = set()


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

    def __call__(self, sites: Any, feat: Tensor, weight: Tensor, training: bool, autograd: bool = False) -> Tensor:
        """Bias-free conv of ``feat`` with KRSC ``weight`` on ``sites`` (the level's cached
        ``SparseConvTensor``, whose indice dict keeps the pairs); autograd through spconv only if asked."""
        channels = (weight.shape[-1], weight.shape[0])
        if autograd and feat.is_cuda:
            self.tune_backward(sites, feat, weight, training)
        if channels not in self.modules:
            # The base class (SubMConv3d = SparseConvolution(ndim 3, subm)) accepts device=.
            self.modules[channels] = import_spconv().conv.SparseConvolution(
                3, *channels, self.kernel_size, bias=False, subm=True, indice_key=self.key, device="meta")
        with _one_thread() if feat.device.type == "cpu" else contextlib.nullcontext(), \
                torch.set_grad_enabled(autograd and torch.is_grad_enabled()):
            # _conv_forward takes the weight explicitly (spconv 2.3): ours, shared, no copy.
            out = self.modules[channels]._conv_forward(training, sites.replace_feature(feat),
                                                       weight.to(feat.dtype), None)
        keep_index_pairs(sites, out)
        return out.features

    def tune_backward(self, sites: Any, feat: Tensor, weight: Tensor, training: bool) -> None:
        """Before the first spconv backward of these channels, one throwaway backward at this size.

        spconv picks its backward kernels per channel count on the first backward it runs and keeps
        them for every size. A backward pass meets the deepest, smallest level first: tuned there,
        GEM's rank-32 SA backward took 11.6 ms at level 0 (307k sites) instead of 1.8 ms
        (``scripts/conv_backward_bench.py --reverse``, H200). The forward meets level 0 first, so
        tuning here, on the first forward, tunes at the largest size.
        """
        key = (weight.shape[-1], weight.shape[0], self.kernel_size, feat.dtype, feat.device)
        if key in _BACKWARD_TUNED:
            return
        _BACKWARD_TUNED.add(key)
        with torch.enable_grad():
            f, w = feat.detach().requires_grad_(), weight.detach().requires_grad_()
            out = self(sites, f, w, training, autograd=True)
            torch.autograd.grad(out, (f, w), torch.ones_like(out))


def spconv_dtype(dtype: torch.dtype, device_type: str) -> torch.dtype:
    """The dtype spconv computes ``dtype`` features in: float16 under CUDA float16 autocast, in eval too.

    spconv's training path casts its inputs to float16 under autocast (``custom_fwd``); its eval path
    does not, so a float32 residual stream ran the eval convs in float32 SIMT kernels: 33.5 of 64.3 ms
    of a batch-3 Sonata forward's device time on an H200 (``scripts/kernel_profile.py``). spconv has no
    bfloat16 kernels: bfloat16 runs in float32 (KeyError otherwise).
    """
    if dtype == torch.bfloat16:
        return torch.float32
    if dtype == torch.float32 and device_type == "cuda" and torch.is_autocast_enabled("cuda") \
            and torch.get_autocast_dtype("cuda") == torch.float16:
        return torch.float16
    return dtype


def spconv_submconv(runner: SpconvRunner, point: Point, feat: Tensor, weight: Tensor, training: bool) -> Tensor:
    """Bias-free submanifold conv of ``feat`` (N, in) with KRSC ``weight`` through spconv."""
    feat = feat.to(spconv_dtype(feat.dtype, feat.device.type))
    sites = sparse_conv_tensor(point, feat)
    if not (torch.is_grad_enabled() and (feat.requires_grad or weight.requires_grad)):
        # no gradient: spconv called directly, no autograd Function around it
        return runner(sites, feat, weight, training)
    if weight.requires_grad and feat.is_cuda and WEIGHT_GRAD_BY == "spconv":
        return runner(sites, feat, weight, training, autograd=True)
    # the backward keeps the sites and the neighbour table, never the point: a point in the
    # autograd graph that its own features' graph refers to is a cycle nothing frees (measured:
    # ~1.3 GB more GPU memory per GEM training step on an H200)
    table = cached_neighbour_table(point, runner.kernel_size) if weight.requires_grad else None
    return apply(_SpconvConv, feat, weight, runner, sites, training, table)


class _SpconvConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat: Tensor, weight: Tensor, runner: SpconvRunner, sites: Any,  # type: ignore[override]
                training: bool, table: Tensor | None) -> Tensor:
        ctx.save_for_backward(feat if table is not None else None, weight, table)
        ctx.runner, ctx.sites, ctx.training = runner, sites, training
        return runner(sites, feat, weight, training)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        feat, weight, table = ctx.saved_tensors
        grad = grad.contiguous()
        d_feat = d_weight = None
        if ctx.needs_input_grad[0]:
            mirrored = weight.flip(1, 2, 3).transpose(0, 4).contiguous()          # KRSC [in, k, k, k, out]
            d_feat = ctx.runner(ctx.sites, grad, mirrored, ctx.training)
        if ctx.needs_input_grad[1]:
            d_weight = gathered_weight_grad(feat, grad, table, weight.shape).to(weight.dtype)
        return d_feat, d_weight, None, None, None, None


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
