"""LoRA (Hu et al. 2021) on the encoder blocks' linear layers, by module substitution.

Each targeted ``nn.Linear`` becomes a ``LoRALinear`` that keeps it as ``base_layer`` and adds a
rank-r update ``y = base(x) + lora_B(lora_A(dropout(x))) * scaling``. Defaults reproduce the
paper's Table 1 size (``gem-paper.md`` §4): r=64 on the ``attn.qkv`` of all 24 encoder blocks,
1,855,572 trainable with the ScanNet-20 head. ``alpha=64`` keeps ``scaling = alpha/r = 1``
(our choice: the paper does not state alpha).

``qkv_targets`` says which parts of the fused qkv projection get an update. ``q,k`` (default) is
the paper's own description ("ΔQ = x W_down W_up ... and similarly for ΔK"): a rank-r update of
Q and one of K, 2 x 2rd = 4rd per block. ``q,v`` is Hu et al.'s choice for transformers (same
count). ``q,k,v`` is one update of the whole fused layer, as HF peft on ``qkv`` (Pointcept's LoRA
segmentor): A r x d shared, B 3d x r, also 4rd. All three give Table 1's 1.9M, so the count
cannot tell them apart; the paper's wording decides the default. Load Sonata checkpoints *before* attaching: the
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
    qkv_targets: str = "q,k"      # fused qkv parts updated: q,k (paper) | q,v (Hu et al.) | q,k,v (one fused update)

    def __post_init__(self) -> None:
        # A list or a single name from YAML; a tuple keeps the dataclass default immutable.
        self.targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)


QKV_TARGETS = ("q,k", "q,v", "q,k,v")
QKV = "qkv"


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (zero at init: ``lora_B`` is zeros).

    ``parts=None``: one update of the whole layer (``lora_A``, ``lora_B``). ``parts`` = some of
    "q", "k", "v": the layer is a fused qkv (output = [Q; K; V]) and each named part gets its own
    rank-r update (``lora_A.q``, ``lora_B.q``, ...); the other parts are left as they are.
    """

    def __init__(self, base_layer: nn.Linear, r: int, scaling: float, dropout: float,
                 parts: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.parts = parts
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        d_in, d_out = base_layer.in_features, base_layer.out_features

        def pair() -> tuple[nn.Linear, nn.Linear]:
            a = nn.Linear(d_in, r, bias=False, **factory)
            b = nn.Linear(r, d_out if parts is None else d_out // len(QKV), bias=False, **factory)
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)
            return a, b

        if parts is None:
            self.lora_A, self.lora_B = pair()
        else:
            pairs = {part: pair() for part in parts}
            self.lora_A = nn.ModuleDict({part: a for part, (a, _) in pairs.items()})
            self.lora_B = nn.ModuleDict({part: b for part, (_, b) in pairs.items()})
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer(x)
        a, b = self.factors()
        update_in = nn.functional.linear(self.lora_dropout(x), a).reshape(-1, a.shape[0])
        # base + scaling * (x A^T) B^T as one addmm (the scaling in its epilogue): no (N, out) update, zeros,
        # concat or scaling pass, and one matmul for all parts (a Sonata step on CPU, ops over frozen's:
        # mm 187 -> 92 + 24 addmm, linear 96 -> 24, mul 48 -> 0)
        return torch.addmm(base.reshape(-1, base.shape[-1]), update_in, b.t(), alpha=self.scaling).view(base.shape)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` with ``B @ A * scaling`` the update: for qkv parts, their A stacked (k*r, in) and their B
        block-diagonal (out, k*r), zero rows where a part has no update."""
        if self.parts is None:
            return self.lora_A.weight, self.lora_B.weight
        ordered = [part for part in QKV if part in self.parts]
        a = torch.cat([self.lora_A[part].weight for part in ordered])
        part_rows = self.base_layer.out_features // len(QKV)
        b = torch.block_diag(*[self.lora_B[part].weight if part in self.parts else a.new_zeros(part_rows, 0)
                               for part in QKV])
        return a, b

    def delta_weight(self) -> torch.Tensor:
        """``B @ A * scaling``, the (out, in) update that ``merge`` adds to the base weight."""
        a, b = self.factors()
        return (b @ a) * self.scaling

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
        if cfg.qkv_targets not in QKV_TARGETS:
            raise PeftbenchError(f"lora: qkv_targets must be one of {', '.join(QKV_TARGETS)} (the fused qkv's "
                                 f"parts that get an update), got {cfg.qkv_targets!r}")
        parts = None if cfg.qkv_targets == "q,k,v" else tuple(cfg.qkv_targets.split(","))
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
                layer = block.get_submodule(name)
                fused = name.rpartition(".")[2] == QKV and layer.out_features == len(QKV) * layer.in_features
                set_submodule(block, name, LoRALinear(layer, cfg.r, scaling, cfg.dropout, parts if fused else None))

    def merge(self, model: nn.Module) -> None:
        """Fold every LoRA update into its base weight and unwrap it: the backbone's keys and
        forward become plain Sonata's again (the LoRA parameters are gone, so it cannot be undone)."""
        wrapped = [name for name, module in model.named_modules() if isinstance(module, LoRALinear)]
        if not wrapped:
            raise PeftbenchError("lora: nothing to merge; the model has no LoRA layers (attach lora first)")
        for name in wrapped:
            set_submodule(model, name, model.get_submodule(name).merged())
