"""Backbone checkpoint I/O: Sonata release files, Pointcept training and pre-training checkpoints.

Loading is strict by default: a missing, unexpected or mis-shaped tensor is an error naming the
first offenders, never silently random weights (Pointcept's ``strict=False`` pitfall).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftbench.errors import PeftbenchError

# (format name, prefix to strip); tried in this order on the keys of the file's state dict.
_FORMATS = (
    ("pointcept-pretrain", "module.student.backbone."),
    ("pointcept-train", "module.backbone."),
    ("pointcept-train", "backbone."),
    ("pointcept-train", "module."),
    ("sonata", ""),
)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor], str]:
    """Return ``(config or None, backbone state dict without prefix, detected format)``."""
    path = Path(path)
    if not path.is_file():
        raise PeftbenchError(f"checkpoint not found: {path} (set backbone.checkpoint to an existing .pth file)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a user file problem
        raise PeftbenchError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise PeftbenchError(f"checkpoint {path} has no 'state_dict' entry; expected Sonata's "
                             "{'config', 'state_dict'} or a Pointcept checkpoint")
    state = raw["state_dict"]
    config = raw.get("config")
    for fmt, prefix in _FORMATS:
        if prefix and any(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            return config, stripped, fmt
    return config, dict(state), "sonata"


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True,
                        source: str = "checkpoint", fmt: str = "sonata") -> None:
    """Load ``state`` into ``model``; with ``strict`` any mismatch is a PeftbenchError."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if strict and (missing or unexpected or shapes):
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])})")
        raise PeftbenchError(f"{source} (detected format: {fmt}) does not fit the backbone: " + "; ".join(parts)
                             + ". Check backbone.config matches the checkpoint, or set backbone.strict: false")
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)


def save_sonata_checkpoint(path: str | Path, config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
    """Write Sonata's release format: ``{"config": constructor kwargs, "state_dict": unprefixed}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": plain, "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint behind
