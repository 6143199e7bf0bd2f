"""Data-efficiency splits: limited scenes (``scenes-<pct>``) and limited annotations (``points-<n>``).

Official benchmark files are used when present (reference §9):

- ``<root>/tasks/scenes/<pct>.txt``: the training scene names (e.g. ``tasks/scenes/1.txt``);
- ``<root>/tasks/points/points<n>``: a ``torch.load`` dict scene -> labelled point indices at full
  resolution (e.g. ``tasks/points/points20``).

Otherwise a deterministic seeded subset is drawn. Its seed is the dataset's ``data_seed`` (the
*split seed*), never the trial seed, so every method and every trial seed sees the same subset:

- scenes: ``max(1, round(pct/100 * N))`` scenes, the first ones of a seeded permutation of the
  sorted train scene names (so 1 % is inside 5 %, inside 10 %, ...);
- points: per scene ``n`` points drawn uniformly without replacement among the labelled points
  (label != -1), the first ``n`` of a permutation seeded by (split seed, scene name); a scene with
  fewer labelled points keeps them all (so 20 is inside 50, inside 100, ...).

Unlabelled points get label -1; the labelled ones are passed on as ``sampled_index``, which
``RandomDropout`` and the training ``GridSample`` always keep. The split used is returned as a
record (source, seed, scenes or per-scene counts, a content hash) that the trial logs.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from peftbench.errors import PeftbenchError

IGNORE_INDEX = -1
_SPLIT = re.compile(r"^(full|scenes-(\d+(?:\.\d+)?)|points-(\d+))$")


def parse_split(split: str) -> tuple[str, str | None]:
    """``full`` -> ("full", None); ``scenes-10`` -> ("scenes", "10"); ``points-20`` -> ("points", "20")."""
    match = _SPLIT.match(str(split))
    if not match:
        raise PeftbenchError(f"split {split!r} is not a split; use full, scenes-<percent> or "
                             "points-<labelled points per scene>")
    if match.group(2) is not None:
        if not 0 < float(match.group(2)) <= 100:
            raise PeftbenchError(f"split {split!r}: the percentage of scenes must be in (0, 100]")
        return "scenes", match.group(2)
    if match.group(3) is not None:
        if int(match.group(3)) < 1:
            raise PeftbenchError(f"split {split!r}: the number of labelled points per scene must be >= 1")
        return "points", match.group(3)
    return "full", None


class LimitedAnnotation:
    """Transform: keep the labels of the listed points only (others -1) and mark them ``sampled_index``."""

    def __init__(self, labelled: dict[str, np.ndarray], source: str) -> None:
        self.labelled = {k: np.unique(np.asarray(v, dtype=np.int64)) for k, v in labelled.items()}
        self.source = source

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        name = data.get("name", "?")
        if name not in self.labelled:
            raise PeftbenchError(f"scene {name}: no labelled points listed in {self.source}")
        index = self.labelled[name]
        n = len(data["segment"])
        if len(index) and (index[0] < 0 or index[-1] >= n):
            bad = int(index[0] if index[0] < 0 else index[-1])
            raise PeftbenchError(f"scene {name}: {self.source} lists point index {bad} but the scene has {n} "
                                 f"points (indices must be full-resolution, 0..{n - 1})")
        segment = np.full(n, IGNORE_INDEX, dtype=np.int64)
        segment[index] = data["segment"][index]
        return {**data, "segment": segment, "sampled_index": index}


@dataclass
class EfficiencySplit:
    scenes: list[str] | None              # None: every scene of the train split
    labelled: LimitedAnnotation | None    # None: every label
    record: dict[str, Any]


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def _scenes_hash(scenes: list[str]) -> str:
    return _digest([s.encode() for s in sorted(scenes)])


def _points_hash(labelled: dict[str, np.ndarray]) -> str:
    parts = []
    for scene in sorted(labelled):
        parts += [scene.encode(), np.sort(np.asarray(labelled[scene], dtype=np.int64)).tobytes()]
    return _digest(parts)


def _numpy_globals() -> list:
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.int64)),
            type(np.dtype(np.int32)), type(np.dtype(np.int16)), type(np.dtype(np.uint32))]


def load_points_file(path: Path) -> dict[str, np.ndarray]:
    """The official limited-annotation file: dict scene -> indices (tensors or numpy arrays)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            with torch.serialization.safe_globals(_numpy_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is a user file problem
            raise PeftbenchError(f"cannot read limited-annotation file {path}: {err}".replace("\n", " ")) from err
    except Exception as err:  # noqa: BLE001
        raise PeftbenchError(f"cannot read limited-annotation file {path}: {err}".replace("\n", " ")) from err
    if not isinstance(obj, dict):
        raise PeftbenchError(f"limited-annotation file {path} holds {type(obj).__name__}; expected a dict "
                             "scene name -> labelled point indices")
    out = {}
    for scene, index in obj.items():
        array = index.numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise PeftbenchError(f"limited-annotation file {path}: scene {scene} has {array.dtype} values of shape "
                                 f"{array.shape}; expected a 1-D list of point indices")
        out[str(scene)] = array.astype(np.int64)
    return out


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def seeded_scenes(names: list[str], percent: float, split_seed: int) -> list[str]:
    """``max(1, round(percent% of N))`` scenes: a prefix of one seeded permutation (nested subsets)."""
    ordered = sorted(names)
    count = min(len(ordered), max(1, _round_half_up(len(ordered) * percent / 100.0)))
    order = np.random.default_rng([split_seed, 0x5CE7E5]).permutation(len(ordered))
    return sorted(ordered[i] for i in order[:count])


def seeded_points(labels: np.ndarray, scene: str, count: int, split_seed: int) -> np.ndarray:
    """``count`` labelled points of one scene (all if fewer): a prefix of a permutation seeded by
    (split seed, scene name), sorted."""
    candidates = np.flatnonzero(labels != IGNORE_INDEX)
    rng = np.random.default_rng([split_seed, zlib.crc32(scene.encode())])
    return np.sort(candidates[rng.permutation(len(candidates))[:count]])


def _read_scene_file(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise PeftbenchError(f"limited-scenes file {path} lists no scene")
    return names


def efficiency_split(dataset, root: Path, split: str, split_seed: int = 0) -> EfficiencySplit:
    """The scenes and labelled points a trial trains on; ``dataset`` is the whole train split
    (``scene_names``, ``load_labels(i)``)."""
    kind, value = parse_split(split)
    names = list(dataset.scene_names)
    if kind != "full" and len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise PeftbenchError(f"split {split!r} needs scene names that are unique across the train split folders "
                             f"{dataset.splits}; {', '.join(twice[:3])} occur in several")
    base = {"split": split, "kind": kind, "train_splits": list(dataset.splits), "split_seed": split_seed}
    if kind == "full":
        return EfficiencySplit(None, None, {**base, "source": "all scenes", "num_scenes": len(names),
                                            "hash": _scenes_hash(names)})
    if kind == "scenes":
        path = Path(root) / "tasks" / "scenes" / f"{value}.txt"
        if path.is_file():
            scenes, source = _read_scene_file(path), str(path)
            missing = sorted(set(scenes) - set(names))
            if missing:
                raise PeftbenchError(f"limited-scenes file {path} names {len(missing)} scene(s) not in split(s) "
                                     f"{dataset.splits}: {', '.join(missing[:5])}; fix the file or train_split")
            scenes = sorted(set(scenes))
        else:
            scenes, source = seeded_scenes(names, float(value), split_seed), "seeded subset"
        record = {**base, "source": source, "percent": float(value), "num_scenes": len(scenes),
                  "of_scenes": len(names), "scenes": scenes, "hash": _scenes_hash(scenes)}
        return EfficiencySplit(scenes, None, record)
    count = int(value)
    path = Path(root) / "tasks" / "points" / f"points{count}"
    if path.is_file():
        table, source = load_points_file(path), str(path)
        missing = sorted(set(names) - set(table))
        if missing:
            raise PeftbenchError(f"limited-annotation file {path} lists no points for {len(missing)} training "
                                 f"scene(s): {', '.join(missing[:5])}; fix the file or train_split")
        labelled = {name: table[name] for name in names}
    else:
        source = "seeded subset"
        labelled = {name: seeded_points(dataset.load_labels(i), name, count, split_seed)
                    for i, name in enumerate(names)}
    counts = {name: int(len(np.unique(index))) for name, index in labelled.items()}
    record = {**base, "source": source, "points_per_scene": count, "num_scenes": len(names),
              "labelled_points": int(sum(counts.values())), "counts": counts, "hash": _points_hash(labelled)}
    return EfficiencySplit(None, LimitedAnnotation(labelled, source), record)


__all__ = ["EfficiencySplit", "LimitedAnnotation", "efficiency_split", "load_points_file", "parse_split",
           "seeded_points", "seeded_scenes"]
