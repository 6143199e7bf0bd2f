"""The method plugin base: a config dataclass + ``attach(model)``; everything else is generic.

As in HF peft, a method's own parameters live under its own name prefix (a dotted-name component
starting with ``prefix``, e.g. ``enc.enc0.block0.cpe_branches.gem_sa.down.weight``), so freezing,
counting, method-only checkpoints and the optimizer groups need no per-method code.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, ClassVar

import torch
from torch import nn

from peftbench.errors import PeftbenchError
from peftbench.train.precision import forget_cast_candidates


HEAD_PREFIXES = ("seg_head.", "backbone.dec.")


@dataclasses.dataclass
class MethodConfig:
    """Base of method configs. Subclasses add fields whose defaults match the paper's sizes."""


class Method:
    """Subclass, set ``name``/``prefix``/``config_class``, implement ``attach``, and decorate
    with ``@peftbench.register``."""

    name: ClassVar[str] = ""
    prefix: ClassVar[str] = ""              # name prefix of the method's own parameters
    config_class: ClassVar[type] = MethodConfig
    trains_backbone: ClassVar[bool] = False  # full fine-tuning
    mergeable: ClassVar[bool] = False        # linear methods (LoRA) can fold into the backbone

    def __init__(self, config: MethodConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = make_config(self.config_class, overrides, self.name)
        self.config = config

    # -- what a plugin implements ------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Insert the method's modules into ``model`` (a Segmentor) through the backbone's slots."""

    def is_trainable(self, name: str) -> bool:
        """Whether parameter ``name`` trains. Default: the head (with a decoder, the decoder too: the
        paper's Table 4 trains it with every method) and the method's own parameters."""
        return self.trains_backbone or name.startswith(HEAD_PREFIXES) or self.owns(name)

    def merge(self, model: nn.Module) -> None:
        raise PeftbenchError(f"method {self.name!r} cannot be merged into the backbone (only linear methods can)")

    # -- generic ----------------------------------------------------------------------------
    def owns(self, name: str) -> bool:
        return bool(self.prefix) and any(part.startswith(self.prefix) for part in name.split("."))

    def apply(self, model: nn.Module) -> nn.Module:
        """Attach, then freeze everything this method does not train."""
        self.attach(model)
        forget_cast_candidates(model)
        if self.prefix and not any(self.owns(n) for n, _ in model.named_parameters()):
            raise PeftbenchError(f"method {self.name!r} attached no parameters with prefix {self.prefix!r}: "
                                 "check its target settings")
        for name, param in model.named_parameters():
            param.requires_grad_(self.is_trainable(name))
        return model


def make_config(config_class: type, values: dict[str, Any], method: str) -> Any:
    """Build a config dataclass; an unknown field is a PeftbenchError listing the valid ones."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise PeftbenchError(f"method {method!r}: unknown setting(s) {unknown}; valid: {sorted(fields) or 'none'}")
    return config_class(**values)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)``; trainable % = 100·trainable/total, as HF peft prints it."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def method_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only what trains (method parameters and head): the file scales with the trainable count."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_method_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a method-only state dict onto a model with the same method attached (strict)."""
    own = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise PeftbenchError(f"method weights do not fit: missing {missing[:3]} ({len(missing)}), unexpected "
                             f"{unexpected[:3]} ({len(unexpected)}); attach the same method and settings first")
    with torch.no_grad():
        for name, tensor in state.items():
            if own[name].shape != tensor.shape:
                raise PeftbenchError(f"method weight {name} has shape {tuple(tensor.shape)}, "
                                     f"model expects {tuple(own[name].shape)}")
            own[name].copy_(tensor)


def method_state_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(method_state_dict(model), buffer)
    return buffer.getvalue()
