"""Batching point clouds: concatenate along the point axis and mark scene ends with ``offset``.

``offset`` is int64 (B,), the cumulative end of each scene's points (Sonata's convention, see
``peftbench.backbone.structure``). ``inverse`` (from ``GridSample(return_inverse=True)``) maps
every original point of a scene to one of its sampled points; after batching it indexes the
concatenated sampled points, so ``logits[batch["inverse"]]`` gives one row per original point,
scene after scene, and ``origin_offset`` marks where each scene's original points end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

SHIFTED_BY_POINTS = ("inverse",)  # values index the sample's points, so they move with the batch
ORIGIN_KEYS = ("inverse", "origin_segment")  # one row per original point: split by origin_offset


def _as_tensor(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(value)
    return value


def collate_points(samples: list[dict]) -> dict:
    """Concatenate tensors key by key along dim 0; other values (e.g. ``name``) become lists.

    Adds ``offset`` (cumulative point counts) and, when ``inverse`` is present, shifts it per sample
    and adds ``origin_offset`` (cumulative original point counts). ``index`` (test fragments) is
    left as is: the fragments of one scene all index that scene's points.
    """
    if not samples:
        raise ValueError("collate_points needs at least one sample")
    keys = list(samples[0])
    for i, sample in enumerate(samples[1:], start=1):
        if set(sample) != set(keys):
            raise ValueError(f"sample {i} has keys {sorted(sample)}, sample 0 has {sorted(keys)}")
    samples = [{k: _as_tensor(v) for k, v in s.items()} for s in samples]
    counts = torch.tensor([len(s["coord"]) for s in samples], dtype=torch.int64)
    starts = torch.cumsum(counts, 0) - counts
    batch: dict = {}
    for key in keys:
        if key in ("offset", "origin_offset"):
            continue  # recomputed below for the whole batch
        values = [s[key] for s in samples]
        if not all(isinstance(v, torch.Tensor) for v in values):
            batch[key] = values
            continue
        if key in SHIFTED_BY_POINTS:
            values = [v + start for v, start in zip(values, starts.tolist())]
        batch[key] = torch.stack(values) if values[0].dim() == 0 else torch.cat(values, dim=0)
    batch["offset"] = torch.cumsum(counts, 0)
    if "inverse" in keys:
        batch["origin_offset"] = torch.cumsum(torch.tensor([len(s["inverse"]) for s in samples]), 0)
    return batch


def concat_batches(batches: list[dict]) -> dict:
    """Collated batches as one: per-point tensors concatenated, offsets (and ``inverse``) moved by
    the points before them, lists joined. Scenes stay as each batch collated them (Mix3D merges
    stay within their batch), so one forward pass over the result computes every scene as the
    batches' own passes would. Other values (settings such as ``grid_size``) are the first batch's."""
    if len(batches) == 1:
        return batches[0]
    out: dict = {}
    points = origin = 0
    for batch in batches:
        shifts = {"offset": points, "origin_offset": origin, **dict.fromkeys(SHIFTED_BY_POINTS, points)}
        for key, value in batch.items():
            if key in shifts and isinstance(value, torch.Tensor):
                value = value + shifts[key]
            out.setdefault(key, []).append(value)
        points += len(batch["coord"])
        origin += int(batch["origin_offset"][-1]) if "origin_offset" in batch else 0
    return {k: torch.cat(v) if isinstance(v[0], torch.Tensor) else
            [x for part in v for x in part] if isinstance(v[0], list) else v[0]  # a setting, e.g. grid_size
            for k, v in out.items()}


def split_batch(batch: dict) -> list[dict]:
    """A collated batch as one collated batch per scene (``concat_batches`` joins them back): per-point
    tensors cut at ``offset``, ``ORIGIN_KEYS`` at ``origin_offset`` (``inverse`` moved back), per-scene
    lists one item each, other values (settings) kept."""
    ends = batch["offset"].tolist()
    origin_ends = batch["origin_offset"].tolist() if "origin_offset" in batch else [0] * len(ends)
    parts = []
    for s, (start, end, origin_start, origin_end) in enumerate(zip([0, *ends], ends, [0, *origin_ends], origin_ends)):
        part: dict = {}
        for key, value in batch.items():
            if key == "offset":
                value = torch.tensor([end - start], device=value.device)
            elif key == "origin_offset":
                value = torch.tensor([origin_end - origin_start], device=value.device)
            elif key in ORIGIN_KEYS and isinstance(value, torch.Tensor):
                value = value[origin_start:origin_end] - (start if key in SHIFTED_BY_POINTS else 0)
            elif isinstance(value, torch.Tensor) and value.dim() and len(value) == ends[-1]:
                value = value[start:end]
            elif isinstance(value, list) and len(value) == len(ends):
                value = [value[s]]
            part[key] = value
        parts.append(part)
    return parts


def mix3d_collate(samples: list[dict], mix_prob: float, rng: np.random.Generator) -> dict:
    """``collate_points``, then with probability ``mix_prob`` (one draw per batch) merge scenes
    pairwise (0+1, 2+3, ...; an odd last one stays alone) by dropping offsets, as Pointcept's
    ``point_collate_fn`` does for Mix3D-style training. ``rng`` is drawn from once per call.
    """
    batch = collate_points(samples)
    if rng.random() < mix_prob:
        for key in ("offset", "origin_offset"):
            if key in batch:
                offset = batch[key]
                batch[key] = torch.cat([offset[1:-1:2], offset[-1:]])
    return batch
