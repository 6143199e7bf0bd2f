"""LoRA (Hu et al. 2021) on the encoder blocks' linear layers, by module substitution.

Each targeted ``nn.Linear`` becomes a ``LoRALinear`` that keeps it as ``base_layer`` and adds a
rank-r update ``y = base(x) + lora_B(lora_A(dropout(x))) * scaling``. Defaults reproduce the
paper's Table 1 size (``gem-paper.md`` §4): r=64 on the fused ``attn.qkv`` of all 24 encoder
blocks, 1,855,572 trainable with the ScanNet-20 head. ``alpha=64`` keeps ``scaling = alpha/r = 1``
(our choice: the paper does not state alpha). Load Sonata checkpoints *before* attaching: the
wrapped weight's key becomes ``...attn.qkv.base_layer.weight`` until ``merge`` folds it back.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from peftbench import Method, MethodConfig, register
from peftbench.errors import PeftbenchError


@dataclasses.dataclass
class LoRAConfig(MethodConfig):
    r: int = 64                   # rank (Table 10's tight budget: r=1)
    alpha: float = 64             # scaling = alpha / r = 1.0
    dropout: float = 0.0          # on the LoRA path's input only
    targets: tuple[str, ...] = ("qkv",)  # suffixes of encoder-block module names, e.g. "proj", "fc1", "fc2"
    use_rslora: bool = False      # scaling = alpha / sqrt(r) (rank-stabilised LoRA)

    def __post_init__(self) -> None:
        # A list or a single name from YAML; a tuple keeps the dataclass default immutable.
        self.targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (zero at init: ``lora_B`` is zeros)."""

    def __init__(self, base_layer: nn.Linear, r: int, scaling: float, dropout: float) -> None:
        super().__init__()
        self.base_layer = base_layer
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, **factory)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = scaling
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``B @ A * scaling``, the (out, in) update that ``merge`` adds to the base weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def merged(self) -> nn.Linear:
        """The base layer with the update folded in (in place: no copy of a large weight)."""
        with torch.no_grad():
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        return self.base_layer


# Only pretrained layers are targets: slots hold other methods' modules, lora_* are LoRA's own.
SLOT_NAMES = ("cpe_branches", "attn_branches", "mlp_branches", "post_mlp", "kv_prefix", "lora_")


def block_linear_names(block: nn.Module) -> list[str]:
    """Names (relative to the block) of the block's pretrained linear layers, the valid LoRA targets."""
    return [name for name, module in block.named_modules()
            if type(module) is nn.Linear and not any(slot in name for slot in SLOT_NAMES)]


def matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


@register
class LoRA(Method):
    """LoRA on encoder-block linear layers (default: the fused qkv, r=64); mergeable."""

    name = "lora"
    prefix = "lora_"
    config_class = LoRAConfig
    mergeable = True

    def attach(self, model: nn.Module) -> None:
        cfg: LoRAConfig = self.config
        if cfg.r < 1:
            raise PeftbenchError(f"lora: r must be >= 1, got {cfg.r}")
        scaling = cfg.alpha / (math.sqrt(cfg.r) if cfg.use_rslora else cfg.r)
        blocks = [block for _, block in model.backbone.encoder_blocks()]
        valid = block_linear_names(blocks[0])
        unmatched = [t for t in cfg.targets if not any(matches(n, t) for n in valid)]
        if unmatched or not cfg.targets:
            raise PeftbenchError(f"lora: target(s) {unmatched or cfg.targets} match no linear layer of an "
                                 f"encoder block; valid module names (suffixes match): {', '.join(valid)}")
        for block in blocks:
            # Collect first, then substitute: replacing while iterating named_modules would revisit wrappers.
            chosen = [n for n in block_linear_names(block) if any(matches(n, t) for t in cfg.targets)]
            for name in chosen:
                set_submodule(block, name, LoRALinear(block.get_submodule(name), cfg.r, scaling, cfg.dropout))

    def merge(self, model: nn.Module) -> None:
        """Fold every LoRA update into its base weight and unwrap it: the backbone's keys and
        forward become plain Sonata's again (the LoRA parameters are gone, so it cannot be undone)."""
        wrapped = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
        if not wrapped:
            raise PeftbenchError("lora: nothing to merge; the model has no LoRA layers (attach lora first)")
        for name in wrapped:
            set_submodule(model, name, model.get_submodule(name).merged())
