"""Epoch checkpoints of a trial's training state, for an exact resume.

What trains (method and head weights, not the frozen backbone), the optimizer, the OneCycle
scheduler, the AMP scaler, every RNG (Python, NumPy, torch CPU and CUDA), epochs completed, the
best validation state, the epoch history and the divergence guard's count. Loaded into a trainer
built the same way (same spec), ``Trainer.fit`` continues at the next epoch and, on CPU with the
same seed, ends with the numbers of an uninterrupted run: each epoch's batches depend only on
(seed, epoch). Files load with ``weights_only=True`` (tensors, numbers, strings, lists, dicts).
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peftbench.errors import PeftbenchError
from peftbench.method import load_method_state_dict, method_state_dict

FORMAT = "peftbench-trainer-checkpoint-1"


def rng_state() -> dict[str, Any]:
    version, keys, gauss = random.getstate()
    kind, mt, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(keys), gauss], "numpy": [kind, torch.from_numpy(mt.astype(np.int64)), pos,
                                                              has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    kind, mt, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, mt.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainer_state(trainer: Any) -> dict[str, Any]:
    """Everything ``Trainer.fit`` needs to continue after ``trainer.epoch`` epochs."""
    if trainer.optimizer is None:
        raise RuntimeError("checkpoint of a trainer that has not been prepared")
    best = trainer.best
    return {
        "format": FORMAT, "epoch": trainer.epoch, "weights": method_state_dict(trainer.model),
        "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(), "rng": rng_state(), "history": list(trainer.history),
        "best": None if best is None else {"epoch": best.epoch, "scores": best.scores, "confusion": best.confusion,
                                           "weights": best.weights},
        "guard_skipped": trainer.guard.skipped_in_a_row, "points_seen": trainer.points_seen,
        "step_times": list(trainer.step_times),
    }


def load_trainer_state(trainer: Any, state: dict[str, Any], steps_per_epoch: int) -> None:
    """Put ``trainer`` (model and method attached as when saved) where ``state`` left off."""
    from peftbench.train.trainer import BestState

    if state.get("format") != FORMAT:
        raise PeftbenchError(f"not a peftbench trainer checkpoint (format {state.get('format')!r}); delete it to "
                             "start the trial over")
    trainer.prepare(steps_per_epoch)
    load_method_state_dict(trainer.model, state["weights"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch = int(state["epoch"])
    trainer.history = list(state["history"])
    best = state["best"]
    trainer.best = None if best is None else BestState(best["epoch"], best["scores"], best["confusion"],
                                                       best["weights"])
    trainer.guard.skipped_in_a_row = int(state["guard_skipped"])
    trainer.points_seen = int(state["points_seen"])
    trainer.step_times = list(state["step_times"])
    set_rng_state(state["rng"])


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write atomically (a killed writer leaves the previous checkpoint intact)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise PeftbenchError(f"cannot read the trainer checkpoint {path} ({err}); delete it to start the trial "
                             "over") from err


# ---- a trial's checkpoint folder: what Ray Tune persists, and what a restarted driver finds ----------

STATE_FILE = "trainer.pt"
META_FILE = "meta.json"  # epoch and MLflow run id, readable without loading the state


def write_folder(folder: str | os.PathLike[str], state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """``trainer.pt`` (the state) and ``meta.json`` (``epoch``, ``run_id``, ...) in ``folder``; meta last,
    so a folder with a meta file holds a complete state."""
    import json

    folder = Path(folder)
    save_checkpoint(folder / STATE_FILE, state)
    partial = folder / (META_FILE + ".partial")
    partial.write_text(json.dumps({**meta, "epoch": int(state["epoch"])}))
    partial.replace(folder / META_FILE)
    return folder


def read_meta(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((Path(folder) / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def latest_folder(trial_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint folder with the most epochs under ``trial_dir`` (Ray's ``checkpoint_*`` folders)."""
    found = [(meta["epoch"], sub) for sub in Path(trial_dir).glob("*/")
             if (meta := read_meta(sub)) is not None and (sub / STATE_FILE).is_file()]
    return max(found)[1] if found else None
