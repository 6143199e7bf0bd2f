"""Weights in the autocast dtype without autocast casting them one by one.

Frozen weights are stored in the autocast dtype. Autocast caches its casts only for leaf tensors that
require grad: a frozen fp32 weight is cast again by every op that uses it (~260 casts per Sonata-size
forward). Stored once in the dtype the op computes in, the result is bit-identical (the same
round-to-nearest cast, done once) and the frozen backbone takes half the memory. Measured on an H200
(scripts/host_profile.py --half-frozen): inference at batch 1 39.8 -> 36.6 ms.

Trainable ``nn.Linear`` weights (full fine-tuning of Sonata: 252 of them) are cast once per training forward as
one flat cast (``trainable_weights_cast_once``), and their gradients back as one, instead of a cast and a
``ToCopyBackward`` node each: a GPU step is bound by the host's time per op. Bit-identical as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from peftbench.backbone.sparse_conv import SubMConv3d


def store_frozen_weights(model: nn.Module, amp_dtype: torch.dtype) -> int:
    """Frozen ``nn.Linear`` parameters to ``amp_dtype``, frozen ``SubMConv3d`` ones to float16
    under float16 autocast; returns how many were converted.

    Only for a model that then runs under autocast of ``amp_dtype`` (float32 inputs would meet
    half weights). Sparse convs stay float32 under bfloat16: spconv has no bfloat16 kernels and
    runs those in float32, where a bfloat16-rounded weight would change the result.
    """
    converted = 0
    for module in model.modules():
        if not (isinstance(module, nn.Linear) or (isinstance(module, SubMConv3d) and amp_dtype == torch.float16)):
            continue
        for param in module.parameters(recurse=False):
            if not param.requires_grad and param.dtype != amp_dtype:
                param.data = param.data.to(amp_dtype)
                converted += 1
    return converted


FLOAT32_WEIGHTS = "float32_weights"  # a module with this attribute True reads its Linears' weights in float32
CAST_ONCE = 1  # 0: autocast casts each trainable weight itself (the A/B of scripts/gather_levels_ab.py --setting)
_CANDIDATES = "_cast_once_candidates"  # kept in the model's __dict__ (not a module attribute: no state)


def cast_once_candidates(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) of every ``nn.Linear`` parameter autocast would cast, skipping modules
    under one marked ``float32_weights`` (GEM's adapters compute with their weights in float32)."""
    skipped: set[int] = set()
    found = []
    for module in model.modules():
        if id(module) in skipped:
            continue
        if getattr(module, FLOAT32_WEIGHTS, False):
            skipped.update(id(m) for m in module.modules())
        elif isinstance(module, nn.Linear):
            found += [(module, name) for name, _ in module.named_parameters(recurse=False)]
    return found


class _CastOnce(torch.autograd.Function):
    """Parameters to ``dtype`` as one flat cast; their gradients back to the parameters' dtype as one."""

    @staticmethod
    def forward(ctx, dtype: torch.dtype, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.shapes, ctx.numels, ctx.param_dtype = [p.shape for p in params], [p.numel() for p in params], params[0].dtype
        flat = torch.cat([p.reshape(-1) for p in params]).to(dtype)
        return tuple(part.view(shape) for part, shape in zip(flat.split(ctx.numels), ctx.shapes))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        flat = torch.cat([g.reshape(-1) for g in grads]).to(ctx.param_dtype)
        return (None, *(part.view(shape) for part, shape in zip(flat.split(ctx.numels), ctx.shapes)))


def forget_cast_candidates(model: nn.Module) -> None:
    """After modules are added or replaced (``Method.apply``), the candidates are listed again."""
    model.__dict__.pop(_CANDIDATES, None)


def keep_autocast_casts(model: nn.Module) -> None:
    """``model`` is left to autocast's own casts (compiled blocks: dynamo would guard on each step's copies)."""
    model.__dict__[_CANDIDATES] = []


def _trainable_float32(model: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    if _CANDIDATES not in model.__dict__:  # listed once: ~600 modules, ~1.5 ms of host time
        model.__dict__[_CANDIDATES] = cast_once_candidates(model)
    chosen = [(module, name, module._parameters[name]) for module, name in model.__dict__[_CANDIDATES]]
    return [(m, n, p) for m, n, p in chosen if p is not None and p.requires_grad and p.dtype == torch.float32]


@contextlib.contextmanager
def trainable_weights_cast_once(model: nn.Module) -> Iterator[None]:
    """While gradients and autocast are on, the trainable float32 ``cast_once_candidates`` of ``model`` are
    their autocast-dtype copies from one ``_CastOnce`` (swapped into the modules' parameter dicts, then back)."""
    under_autocast = torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu")
    chosen = _trainable_float32(model) if CAST_ONCE and under_autocast and torch.is_grad_enabled() else []
    device_type = chosen[0][2].device.type if chosen else None
    if device_type is None or not torch.is_autocast_enabled(device_type):
        yield
        return
    halves = _CastOnce.apply(torch.get_autocast_dtype(device_type), *(p for _, _, p in chosen))
    try:
        for (module, name, _), half in zip(chosen, halves):
            module._parameters[name] = half
        yield
    finally:
        for module, name, param in chosen:
            module._parameters[name] = param
