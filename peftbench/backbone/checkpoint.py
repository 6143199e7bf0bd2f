"""Backbone checkpoint I/O: Sonata release files, Pointcept training and pre-training checkpoints.

Formats (detected from the keys of the file's ``state_dict``):

=====================  ==========================================  ===============================
format                 keys                                        everything else in the file
=====================  ==========================================  ===============================
``sonata``             unprefixed, with a ``config`` entry          (constructor kwargs)
``pointcept-pretrain`` ``module.student.backbone.*`` (or without   ``module.teacher.*``, heads,
                       ``module.``)                                 ... ignored
``pointcept-train``    ``module.backbone.*`` / ``backbone.*``      ``module.seg_head.*`` ignored
``pointcept-train``    ``module.*`` (a bare backbone under DDP)
``unprefixed``         unprefixed, no ``config`` (a bare state dict
                       file is read the same way)
=====================  ==========================================  ===============================

Files are read with ``torch.load(weights_only=True)`` (numpy scalars, which Pointcept stores as
``best_metric_value``, are the only extra globals allowed).

Loading (``load_backbone_state``) is strict by default: a missing, unexpected or mis-shaped tensor
is an error naming the first offenders, their counts and the detected format -- never silently
random weights (Pointcept's ``strict=False`` pitfall). Two structural rules, each logged as a note:

* ``mask_token``: Sonata's pre-training student has ``embedding.mask_token`` [1, C]; a downstream
  backbone (``mask_token=False``, as all of Sonata's downstream configs) drops exactly that key.
  A backbone built with ``mask_token=True`` needs the key (missing = error).
* decoder (``enc_mode``): a checkpoint with ``dec.*`` tensors loaded into an encoder-only backbone
  is an error, as in the reference's strict ``sonata.model.load``, unless the caller asks for
  ``drop_decoder=True``. The other way round -- an encoder-only checkpoint (no ``dec.*`` key at
  all) loaded into a backbone with a decoder -- is Sonata's dec/ft recipe (pre-trained encoder,
  decoder trained from its initialisation): allowed by default (``fresh_decoder=True``), while
  the encoder must still match exactly. A partial decoder is always an error.
"""

from __future__ import annotations

import difflib
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftbench.errors import PeftbenchError

log = logging.getLogger("peftbench")

MASK_TOKEN_KEY = "embedding.mask_token"
DECODER_PREFIX = "dec."

# (format name, prefix to strip); tried in this order on the keys of the file's state dict.
_FORMATS = (
    ("pointcept-pretrain", "module.student.backbone."),
    ("pointcept-pretrain", "student.backbone."),
    ("pointcept-train", "module.backbone."),
    ("pointcept-train", "backbone."),
    ("pointcept-train", "module."),
)

FORMAT_HELP = {
    "sonata": "Sonata release {config, state_dict}, unprefixed keys",
    "pointcept-pretrain": "Pointcept pre-training checkpoint, student backbone",
    "pointcept-train": "Pointcept training checkpoint, backbone",
    "unprefixed": "unprefixed state dict without config",
}


@dataclass
class BackboneCheckpoint:
    """What ``read_backbone_checkpoint`` found in a file."""

    path: Path
    config: dict[str, Any] | None
    state: dict[str, torch.Tensor]          # backbone tensors, prefix stripped
    format: str                             # a key of FORMAT_HELP
    prefix: str                             # the prefix that was stripped ("" for none)
    ignored: list[str] = field(default_factory=list)  # file keys outside the backbone prefix

    @property
    def description(self) -> str:
        prefix = f", prefix {self.prefix!r}" if self.prefix else ""
        return f"{self.format} ({FORMAT_HELP[self.format]}{prefix})"


@dataclass
class LoadReport:
    """What ``load_backbone_state`` did besides copying matching tensors."""

    loaded: int = 0
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)      # file keys deliberately not loaded
    kept_init: list[str] = field(default_factory=list)    # model keys left at initialisation
    missing: list[str] = field(default_factory=list)      # only non-empty with strict=False
    unexpected: list[str] = field(default_factory=list)   # only non-empty with strict=False
    wrong_shape: list[str] = field(default_factory=list)  # only non-empty with strict=False


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; numpy scalars (Pointcept's ``best_metric_value``) allowed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "numpy" not in str(err):
            raise
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list[Any] = [np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"),
                          (scalar, "numpy._core.multiarray.scalar")]
    allowed += [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                                 "BoolDType") if hasattr(np, "dtypes") and hasattr(np.dtypes, n)]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def _group(keys: list[str], depth: int = 2) -> str:
    """``module.teacher.x.y`` ... -> ``module.teacher.* (n)`` summary of a key list."""
    groups: dict[str, int] = {}
    for k in keys:
        head = ".".join(k.split(".")[:depth])
        groups[head] = groups.get(head, 0) + 1
    return ", ".join(f"{h}.* ({n})" for h, n in sorted(groups.items()))


def split_state(state: dict[str, Any], config: dict[str, Any] | None
                ) -> tuple[dict[str, torch.Tensor], str, str, list[str]]:
    """``(backbone state without prefix, format, prefix, ignored keys)`` of a raw state dict."""
    for fmt, prefix in _FORMATS:
        if any(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            ignored = [k for k in state if not k.startswith(prefix)]
            return stripped, fmt, prefix, ignored
    return dict(state), ("sonata" if config is not None else "unprefixed"), "", []


def read_backbone_checkpoint(path: str | Path) -> BackboneCheckpoint:
    """Read a checkpoint file and pick out the backbone tensors (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise PeftbenchError(f"checkpoint not found: {path} (set backbone.checkpoint to an existing .pth file)")
    try:
        raw = _torch_load(path)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a user file problem
        raise PeftbenchError(f"cannot read checkpoint {path} with torch.load(weights_only=True): {err}") from err
    if isinstance(raw, dict) and "state_dict" in raw:
        state, config = raw["state_dict"], raw.get("config")
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, config = raw, None  # a bare state dict (torch.save(model.state_dict()))
    else:
        what = f"keys {sorted(raw)[:6]}" if isinstance(raw, dict) else type(raw).__name__
        raise PeftbenchError(f"checkpoint {path} has no 'state_dict' entry ({what}); expected Sonata's "
                             "{'config', 'state_dict'} or a Pointcept checkpoint")
    if not isinstance(state, dict):
        raise PeftbenchError(f"checkpoint {path}: 'state_dict' is a {type(state).__name__}, not a dict")
    if config is not None and not isinstance(config, dict):
        raise PeftbenchError(f"checkpoint {path}: 'config' is a {type(config).__name__}, not a dict of "
                             "PointTransformerV3 arguments")
    stripped, fmt, prefix, ignored = split_state(state, config)
    bad = [k for k, v in stripped.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise PeftbenchError(f"checkpoint {path}: {len(bad)} entries are not tensors (e.g. {', '.join(bad[:3])})")
    ckpt = BackboneCheckpoint(path, config, stripped, fmt, prefix, ignored)
    if ignored:
        log.info("%s: %s; ignoring %d tensors outside the backbone: %s", path, ckpt.description, len(ignored),
                 _group(ignored))
    return ckpt


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor], str]:
    """Return ``(config or None, backbone state dict without prefix, detected format)``."""
    ckpt = read_backbone_checkpoint(path)
    return ckpt.config, ckpt.state, ckpt.format


def _rename_hints(missing: list[str], unexpected: list[str], own: dict[str, torch.Tensor],
                  state: dict[str, torch.Tensor], limit: int = 3) -> list[str]:
    """Pairs (unexpected -> missing) with the same shape and similar names: likely renames."""
    hints = []
    for k in unexpected[:50]:
        same = [m for m in missing if own[m].shape == state[k].shape]
        close = difflib.get_close_matches(k, same, n=1, cutoff=0.8)
        if close:
            hints.append(f"{k} -> {close[0]}")
        if len(hints) == limit:
            break
    return hints


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], strict: bool = True,
                        source: str = "checkpoint", fmt: str = "sonata", *, drop_decoder: bool = False,
                        fresh_decoder: bool = True) -> LoadReport:
    """Load ``state`` into ``model``; with ``strict`` any mismatch is a PeftbenchError.

    See the module docstring for the ``mask_token`` and decoder rules. Returns a ``LoadReport``;
    its notes are also logged.
    """
    own = model.state_dict()
    state = dict(state)
    report = LoadReport()
    fmt_text = f"{fmt} ({FORMAT_HELP[fmt]})" if fmt in FORMAT_HELP else fmt

    # mask_token: pre-training only; a downstream backbone drops it (Sonata's downstream configs).
    if MASK_TOKEN_KEY in state and MASK_TOKEN_KEY not in own:
        state.pop(MASK_TOKEN_KEY)
        report.dropped.append(MASK_TOKEN_KEY)
        report.notes.append(f"dropped {MASK_TOKEN_KEY} (pre-training mask token; this backbone has "
                            "mask_token=False, as Sonata's downstream configs)")

    own_dec = [k for k in own if k.startswith(DECODER_PREFIX)]
    file_dec = [k for k in state if k.startswith(DECODER_PREFIX)]
    decoder_hint = ""
    if file_dec and not own_dec:
        if drop_decoder:
            for k in file_dec:
                state.pop(k)
            report.dropped += file_dec
            report.notes.append(f"dropped the checkpoint's decoder ({len(file_dec)} dec.* tensors) for this "
                                "encoder-only backbone (drop_decoder=True)")
        else:
            decoder_hint = (f" The checkpoint has a decoder ({len(file_dec)} dec.* tensors) but the backbone is "
                            "encoder-only (enc_mode=True): build the decoder (config sonata-dec, or overrides "
                            "enc_mode: false with its dec_* sizes) or drop it explicitly (drop_decoder=True).")
    elif own_dec and not file_dec:
        if fresh_decoder:
            report.kept_init += own_dec
            report.notes.append(f"the checkpoint has no decoder: the backbone's {len(own_dec)} dec.* tensors keep "
                                "their initialisation (Sonata's dec/ft recipe); the encoder loads strictly")
            own = {k: v for k, v in own.items() if not k.startswith(DECODER_PREFIX)}
        else:
            decoder_hint = (" The checkpoint has no decoder (no dec.* tensors) but the backbone has one: use an "
                            "encoder-only config (enc_mode=True) or allow a freshly initialised decoder.")

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if strict and (missing or unexpected or shapes):
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                more = f", ... {len(items) - 3} more" if len(items) > 3 else ""
                parts.append(f"{len(items)} {label} (e.g. {', '.join(items[:3])}{more})")
        renames = _rename_hints(missing, unexpected, own, state)
        hint = f" Possible renames: {'; '.join(renames)}." if renames else ""
        raise PeftbenchError(
            f"{source} (detected format: {fmt_text}) does not fit the backbone ({len(own)} tensors expected, "
            f"{len(state)} given): " + "; ".join(parts) + "." + hint + decoder_hint
            + " Check that backbone.config matches the checkpoint (or use config: checkpoint for a Sonata "
            "file), or set backbone.strict: false to load only the tensors that fit.")
    if missing or unexpected or shapes:
        report.missing, report.unexpected, report.wrong_shape = missing, unexpected, shapes
        report.notes.append(f"non-strict load from {source}: {len(missing)} missing, {len(unexpected)} "
                            f"unexpected, {len(shapes)} wrong-shape tensors skipped")
    usable = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    for note in report.notes:
        log.info("%s: %s", source, note)
    return report


def save_sonata_checkpoint(path: str | Path, config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
    """Write Sonata's release format: ``{"config": constructor kwargs, "state_dict": unprefixed}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"config": plain, "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written checkpoint behind
