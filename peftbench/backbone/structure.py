"""The point batch: one dict-like structure passed through every layer (as Sonata's ``Point``)."""

from __future__ import annotations

import torch


def offset_to_batch(offset: torch.Tensor) -> torch.Tensor:
    """Cumulative end offsets ``[n0, n0+n1, ...]`` -> per-point scene index.

    No ``output_size``: the host sync it would spare happens once, at a forward pass's input,
    and a wrong offset would then write out of bounds instead of failing."""
    counts = torch.diff(offset, prepend=offset.new_zeros(1))
    return torch.repeat_interleave(torch.arange(len(offset), device=offset.device), counts)


def batch_to_offset(batch: torch.Tensor) -> torch.Tensor:
    """Per-point scene index (sorted) -> cumulative end offsets."""
    return torch.cumsum(torch.bincount(batch), dim=0)


class Point(dict):
    """A batch of point clouds concatenated along the first axis.

    Keys (as in Sonata): ``coord`` (N,3) float, ``grid_coord`` (N,3) int, ``feat`` (N,C),
    ``offset`` (B,) cumulative ends, ``batch`` (N,) scene index, ``grid_size`` float.
    Layers add ``serialized_*``, ``pad``/``unpad``/``cu_seqlens``, ``pooling_parent``/
    ``pooling_inverse`` and ``neighbours`` (sparse-conv index maps keyed by ``indice_key``).
    ``scene_state`` holds per-scene tensors that flow from block to block (e.g. GEM latents).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if "batch" not in self and "offset" in self:
            self["batch"] = offset_to_batch(self["offset"])
        elif "offset" not in self and "batch" in self:
            self["offset"] = batch_to_offset(self["batch"])
        if "grid_coord" not in self and "coord" in self and "grid_size" in self:
            coord = self["coord"]
            self["grid_coord"] = torch.div(
                coord - coord.min(0).values, self["grid_size"], rounding_mode="trunc"
            ).int()
        self.setdefault("neighbours", {})
        self.setdefault("scene_state", {})

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err

    def __setattr__(self, name: str, value) -> None:
        self[name] = value

    @property
    def num_scenes(self) -> int:
        return int(len(self["offset"]))

    def grid_max(self) -> list[int]:
        """Per-axis max of ``grid_coord`` as host ints: one sync at the first level, kept on the
        point; a pooled level derives its own from its parent's (``GridPooling``), with none."""
        if "grid_max" not in self:
            self["grid_max"] = self["grid_coord"].max(0).values.tolist() if len(self["grid_coord"]) else [0, 0, 0]
        return self["grid_max"]
