"""Opt-in ``torch.compile`` of the PTv3 blocks (``train.compile`` / ``peftbench bench --compile``).

A Sonata-size step on a GPU is host-bound (the GPU is busy 15-60 % of a step: reports/bench): a
block launches ~40 small ops. Compiled with dynamic shapes, the linear / norm / residual / MLP runs
between a block's sparse conv and its patch attention become a few fused kernels whatever the
batch's point count (no recompile per batch). The sparse conv (spconv's Python driver) and the
patch attention (host-int patch layout, per-short-patch SDPA calls) stay eager (``torch.compiler.disable``
on ``SubMConv3d.forward``, ``SerializedAttention.layout`` / ``attend_patches``), applied by ``compile_blocks``:
the graph breaks there. As decorators they imported ``torch._dynamo`` with the backbone (model and trainer
imports took 6.3 s and 468 MB on a 2-core CPU with Triton installed, 1.2 s and 236 MB without the import).
Method branches are traced like the rest; their sparse convs stay eager too.

Measured on an H200 (reports/bench/notes.md, 2026-12-03): minutes of compiling, then slower
than eager except batch-3 inference. Off by default.
"""

from __future__ import annotations

import torch
from torch import nn

from peftbench.backbone.attention import SerializedAttention
from peftbench.backbone.block import Block
from peftbench.backbone.sparse_conv import SubMConv3d

# Blocks of every width, train and eval, with and without grad: each a separate graph of the one
# Block.forward code object; dynamo's default limit (8) would silently fall back to eager.
RECOMPILE_LIMIT = 64
# host ints, dict caches, spconv's driver, a Python loop over short patches: eager (graph breaks)
EAGER_METHODS = ((SerializedAttention, "layout"), (SerializedAttention, "attend_patches"), (SubMConv3d, "forward"))


def keep_eager_methods() -> None:
    """``torch.compiler.disable`` on ``EAGER_METHODS``, once per process."""
    for cls, name in EAGER_METHODS:
        method = cls.__dict__[name]
        if not getattr(method, "_torchdynamo_disable", False):
            setattr(cls, name, torch.compiler.disable(method))


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """Compile every ``Block`` of ``model`` in place (state-dict keys unchanged); returns how many.

    Call after the method is attached (branches are part of the traced graph).
    """
    from peftbench.train.precision import keep_autocast_casts

    keep_eager_methods()
    keep_autocast_casts(model)
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    blocks = 0
    for module in model.modules():
        if isinstance(module, Block):
            module.compile(dynamic=True, backend=backend)
            blocks += 1
    return blocks

