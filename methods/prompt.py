"""Prefix tuning for patch attention: m learned key/value rows per encoder block, prepended to
every patch's keys and values (the paper: "prompt tokens can be duplicated into each patch").

Default reproduces the paper's Table 1 size (``gem-paper.md`` §4): m=384 tokens, P_K and P_V of
m x d each on all 24 encoder blocks, 5,517,396 trainable with the ScanNet-20 head (Table 10's
tight budget: num_tokens=2, 53,268). Prefixes are static, scene-agnostic and position-free.
Init is xavier-uniform over the (m, d) matrix, as VPT does (our choice; the paper does not say),
so, unlike the adapters, the model's output already differs from the backbone's at init.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from peftbench import Method, MethodConfig, register
from peftbench.errors import PeftbenchError


@dataclasses.dataclass
class PromptConfig(MethodConfig):
    num_tokens: int = 384         # m prefix rows per block, the same at every stage


class PromptPrefix(nn.Module):
    """The ``attn.kv_prefix`` slot: returns ``(prompt_k, prompt_v)``, each (m, heads, head_dim)."""

    def __init__(self, num_tokens: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.prompt_k = nn.Parameter(torch.empty(num_tokens, num_heads, head_dim))
        self.prompt_v = nn.Parameter(torch.empty(num_tokens, num_heads, head_dim))
        for prompt in (self.prompt_k, self.prompt_v):
            # Fan-in/out of the (m, d) matrix, not of the head-split 3-D shape.
            nn.init.xavier_uniform_(prompt.data.view(num_tokens, num_heads * head_dim))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prompt_k, self.prompt_v


@register
class PrefixTuning(Method):
    """Prefix tuning: m learned key/value rows prepended to every attention patch (default m=384)."""

    name = "prompt"
    prefix = "prompt_"
    config_class = PromptConfig

    def attach(self, model: nn.Module) -> None:
        cfg: PromptConfig = self.config
        if cfg.num_tokens < 1:
            raise PeftbenchError(f"prompt: num_tokens must be >= 1, got {cfg.num_tokens}")
        for _, block in model.backbone.encoder_blocks():
            attn = block.attn
            if attn.kv_prefix is not None:
                raise PeftbenchError("prompt: an encoder block's attn.kv_prefix slot is already filled; "
                                     "attach only one prefix method")
            # Assigning a Module registers it, so its parameters are named ...attn.kv_prefix.prompt_k.
            attn.kv_prefix = PromptPrefix(cfg.num_tokens, attn.num_heads, attn.channels // attn.num_heads)
