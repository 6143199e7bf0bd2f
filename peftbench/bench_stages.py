"""Per-stage device time of one step, from the torch profiler.

While one step runs under the profiler, the backbone's modules and index builders are wrapped in
``record_function`` ranges named ``pb:<stage>``; every op's own device time goes to the innermost
stage range around it. Backward runs on autograd's own thread, outside those ranges: its ops go to
``backward: <kind>`` by the autograd node that launched them. Without CUDA the same split is made
of CPU time (self CPU time of each op), so the breakdown also runs in CPU tests.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function

PREFIX = "pb:"

# Backward node name fragments -> kind (first match wins).
_BACKWARD_KINDS = (
    (("ScaledDotProduct", "FlashAttention", "EfficientAttention"), "attention (SDPA)"),
    (("SparseConv", "SubMConv", "_SpconvConv", "ImplicitGemm", "_SubMConvFunction"), "sparse conv"),
    (("Segment",), "pooling"),
    (("Softmax", "MaskedFill"), "softmax (GEM CA)"),
    (("Mm", "Addmm", "Linear", "Bmm"), "linear layers"),
    (("LayerNorm",), "layer norm"),
    (("IndexSelect", "Index", "Gather", "Scatter", "Cat"), "gather / scatter / cat"),
    (("Gelu", "Relu"), "activations"),
    (("AccumulateGrad",), "grad accumulation"),
)


def _module_stage(name: str, module: nn.Module) -> str | None:
    from peftbench.backbone.attention import SerializedAttention
    from peftbench.backbone.block import MLP, Block, PositionEncoding
    from peftbench.backbone.pooling import GridPooling, GridUnpooling
    from peftbench.backbone.ptv3 import Embedding

    parts = name.split(".")
    if any(p in ("cpe_branches", "attn_branches", "mlp_branches", "post_mlp", "scene_state_init") for p in parts):
        return "method branches" if parts[-2] in ("cpe_branches", "attn_branches", "mlp_branches", "post_mlp",
                                                  "scene_state_init") else None
    kinds = ((PositionEncoding, "conv (CPE)"), (SerializedAttention, "attention"), (MLP, "MLP"),
             (Block, "norms, residuals, drop-path"), (GridPooling, "pooling"), (GridUnpooling, "unpooling"),
             (Embedding, "embedding"))
    for cls, stage in kinds:
        if isinstance(module, cls):
            return stage
    if name.endswith("seg_head"):
        return "head + hypercolumn"
    return None


def _wrap(fn: Callable, stage: str) -> Callable:
    def wrapped(*args, **kwargs):
        with record_function(PREFIX + stage):
            return fn(*args, **kwargs)
    return wrapped


@contextlib.contextmanager
def stage_ranges(model: nn.Module) -> Iterator[None]:
    """Wrap modules (hooks) and index builders (module attributes) in ``pb:`` ranges, then undo."""
    import peftbench.backbone.attention as attention
    import peftbench.backbone.pooling as pooling
    import peftbench.backbone.ptv3 as ptv3
    import peftbench.backbone.sparse_conv as sparse_conv
    import peftbench.backbone.spconv_conv as spconv_conv
    import peftbench.model as segmentor

    patches: list[tuple[Any, str, Any]] = [
        (ptv3, "serialize", "serialization"), (pooling, "serialize", "serialization"),
        (attention, "cached_patch_layout", "patch layout"), (attention, "cached_patch_padding", "patch layout"),
        (sparse_conv, "cached_neighbour_map", "neighbour maps"), (spconv_conv, "sparse_conv_tensor", "neighbour maps"),
        (spconv_conv, "cached_neighbour_table", "neighbour maps"),
        (segmentor, "hypercolumn", "head + hypercolumn"), (segmentor, "hypercolumn_linear", "head + hypercolumn"),
    ]
    if sparse_conv.spconv_available():
        import spconv.pytorch.ops as spconv_ops

        patches += [(spconv_ops, name, "neighbour maps") for name in ("get_indice_pairs", "get_indice_pairs_implicit_gemm")
                    if hasattr(spconv_ops, name)]
    patches = [(obj, name, stage) for obj, name, stage in patches if hasattr(obj, name)]  # older layouts too
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, stage in patches:
        setattr(obj, name, _wrap(getattr(obj, name), stage))
    handles, stacks = [], defaultdict(list)
    for name, module in model.named_modules():
        stage = _module_stage(name, module)
        if stage is None:
            continue

        def enter(mod, _args, stage=stage):
            rf = record_function(PREFIX + stage)
            rf.__enter__()
            stacks[id(mod)].append(rf)

        def leave(mod, _args, _out):
            stacks[id(mod)].pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for obj, name, fn in originals:
            setattr(obj, name, fn)


def _backward_kind(node: str) -> str:
    for fragments, kind in _BACKWARD_KINDS:
        if any(f in node for f in fragments):
            return "backward: " + kind
    return "backward: other"


def _stage_of(event: Any) -> str:
    parent = event
    while parent is not None:
        name = parent.name
        if name.startswith(PREFIX):
            return name[len(PREFIX):]
        if name.startswith("autograd::engine::evaluate_function:"):
            return _backward_kind(name.split(":", 4)[-1])
        parent = parent.cpu_parent
    return "other"


def summarize(events: Any, on_cuda: bool) -> tuple[dict[str, float], dict[str, float]]:
    """``(device ms per stage, host ms per stage)`` of profiler events; the host side is each op's
    self CPU time (what launching costs; Python between ops is not in it)."""
    device: dict[str, float] = defaultdict(float)
    host: dict[str, float] = defaultdict(float)
    kernels_ms = 0.0  # every kernel in the trace, attributed to an op or not
    for event in events:
        if event.name.startswith(PREFIX) or event.name.startswith("ProfilerStep"):
            continue  # ranges, not ops: their time is their children's
        if on_cuda and event.device_type != torch.autograd.DeviceType.CPU:
            kernels_ms += event.time_range.elapsed_us() / 1000
            continue
        stage = _stage_of(event)
        host[stage] += event.self_cpu_time_total / 1000
        if on_cuda:
            device[stage] += event.self_device_time_total / 1000
    if on_cuda and kernels_ms - sum(device.values()) > 0.05:
        # e.g. spconv's eval gemms, launched from its C++ outside any op, so no op owns them: an H200
        # batch-3 forward read 30.5 ms of kernels by op where its trace held 64.3
        device["kernels outside any op"] = kernels_ms - sum(device.values())
    out = []
    for totals in (device if on_cuda else host, host):
        ordered = dict(sorted(((k, v) for k, v in totals.items() if v > 0), key=lambda kv: -kv[1]))
        ordered["total (sum of stages)"] = sum(totals.values())
        out.append(ordered)
    return out[0], out[1]


def stage_breakdown(model: nn.Module, step: Callable[[], None], device: torch.device
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """``summarize`` of one profiled ``step``: ms per stage of device time (CPU time without
    CUDA) and of host time, each with ``"total (sum of stages)"``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with stage_ranges(model), torch.profiler.profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return summarize(prof.events(), device.type == "cuda")
