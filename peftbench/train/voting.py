"""Sonata's test protocol: fragment voting with 13 test-time augmentations (reference §8.3).

Per scene: ``CenterShift(z)``, ``NormalizeColor``, optionally a pre-voxelisation (1 cm for S3DIS and
ScanNet++: one random point per voxel, predictions mapped back to every point via ``inverse``);
then for each of the 13 augmentations (z-rotation {0, 1/2, 1, 3/2}·pi about the origin x scale
{0.95, 1, 1.05}, plus one flip of x and y) the scene is cut into ``GridSample(mode="test")``
fragments, each fragment runs alone (batch 1, as Pointcept's tester; ``fragments_per_pass`` runs
several as the scenes of one batch, which never interact in PTv3; halved after running out of GPU
memory, ``memory_split``) after ``CenterShift(no z)``, and its softmax probabilities are summed into
``probs[index]``. Every point is predicted: within one augmentation a voxel of c points and a scene
of M fragments give each of its points ``floor(M/c)`` or ``ceil(M/c)`` passes (exactly M passes per
voxel), at least one. The argmax is scored against the original labels with Pointcept's metric
(``peftbench.train.metrics``).

S3DIS 6-fold: ``combine_folds`` sums the confusion matrices of the six held-out areas (Pointcept's
``test_s3dis_6fold.py`` sums intersection/union/target, the same numbers).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from peftbench.data.collate import collate_points
from peftbench.data.prefetch import prefetch_to_device
from peftbench.data.transforms import CenterShift, Collect, GridSample, NormalizeColor, ToTensor
from peftbench.errors import PeftbenchError
from peftbench.progress import report_progress
from peftbench.train.memory_split import SplitOnOutOfMemory
from peftbench.train.metrics import confusion_matrix, scores_from_confusion
from peftbench.train.trainer import model_inputs

TEST_PROTOCOLS = ("single", "voting")


class RotateScale:
    """Deterministic test augmentation: rotate about z by ``angle``·pi around the origin, scale by
    ``scale``; with ``flip`` mirror x and y instead (Pointcept's ``RandomFlip(p=1)``)."""

    def __init__(self, angle: float = 0.0, scale: float = 1.0, flip: bool = False) -> None:
        self.angle, self.scale, self.flip = float(angle), float(scale), bool(flip)

    def __call__(self, data: dict, rng: np.random.Generator | None = None) -> dict:
        out = dict(data)
        if self.flip:
            for key in ("coord", "normal"):
                if key in out:
                    out[key] = out[key].copy()
                    out[key][:, :2] = -out[key][:, :2]
            return out
        c, s = math.cos(self.angle * math.pi), math.sin(self.angle * math.pi)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        out["coord"] = ((data["coord"] @ rot.T) * self.scale).astype(data["coord"].dtype)
        if "normal" in data:
            out["normal"] = (data["normal"] @ rot.T).astype(data["normal"].dtype)
        return out

    def __repr__(self) -> str:
        return "Flip(x, y)" if self.flip else f"Rotate(z, {self.angle:g}pi) x Scale({self.scale:g})"


def test_augmentations() -> list[RotateScale]:
    """Sonata's 13: rotations {0, 1/2, 1, 3/2}·pi at scale 1, 0.95, 1.05 (12), then one flip."""
    augs = [RotateScale(a, s) for s in (1.0, 0.95, 1.05) for a in (0.0, 0.5, 1.0, 1.5)]
    return augs + [RotateScale(flip=True)]


test_augmentations.__test__ = False  # not a pytest test


def _autocast(device: torch.device, amp: bool, dtype: torch.dtype = torch.float16):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def vote_scene(model: Callable[..., torch.Tensor], data: dict, num_classes: int, *, grid_size: float = 0.02,
               prevoxel: float | None = None, augmentations: Sequence[Callable] | None = None,
               device: torch.device | str = "cpu", generator: torch.Generator | None = None,
               rng: np.random.Generator | None = None, amp: bool = False,
               amp_dtype: torch.dtype = torch.float16, fragments_per_pass: int = 1) -> torch.Tensor:
    """Summed softmax probabilities (N, K) for every original point of a raw scene ``data``
    (coord, color, normal as read from disk). ``rng`` orders points within voxels (fragments) and
    picks the pre-voxelisation points; ``generator`` goes to the model (serialisation shuffles)."""
    device = torch.device(device)
    rng = rng if rng is not None else np.random.default_rng(0)
    scene = {k: data[k] for k in ("coord", "color", "normal") if k in data}
    scene = NormalizeColor()(CenterShift(apply_z=True)(scene, rng), rng)
    inverse = None
    if prevoxel:
        scene = GridSample(prevoxel, mode="train", return_grid_coord=False, return_inverse=True)(scene, rng)
        inverse = torch.from_numpy(scene.pop("inverse"))
    n = len(scene["coord"])
    probs = torch.zeros(n, num_classes, dtype=torch.float32, device=device)
    fragment_of = GridSample(grid_size, mode="test", return_grid_coord=True)
    post = [CenterShift(apply_z=False), ToTensor(),
            Collect(keys=("coord", "grid_coord", "index"), feat_keys=("coord", "color", "normal"))]

    def fragments():  # lazily, so rng is drawn from in the same order whatever the pass size
        for aug in (test_augmentations() if augmentations is None else augmentations):
            for fragment in fragment_of(aug(scene, rng), rng):
                for t in post:
                    fragment = t(fragment, rng)
                yield fragment

    def passes():  # collated (and, on CUDA, pinned and copied) in prefetch's thread while the GPU runs
        stream = fragments()
        while group := list(itertools.islice(stream, fragments_per_pass)):
            yield collate_points(group)

    def forward(batch: dict) -> torch.Tensor:
        with _autocast(device, amp, amp_dtype):
            return model(model_inputs(batch), generator)

    vote_pass = SplitOnOutOfMemory(forward, "voting fragment")
    for batch in prefetch_to_device(passes(), device):
        for part, logits in vote_pass(batch):
            probs.index_add_(0, part["index"].to(device), logits.float().softmax(dim=-1))
    return probs if inverse is None else probs[inverse.to(device)]


@torch.no_grad()
def evaluate_voting(model: torch.nn.Module, dataset, num_classes: int, *, grid_size: float = 0.02,
                    prevoxel: float | None = None, device: torch.device | str = "cpu", seed: int = 0,
                    amp: bool = False, amp_dtype: torch.dtype = torch.float16,
                    augmentations: Sequence[Callable] | None = None, fragments_per_pass: int = 1,
                    progress: Callable[[str], None] | None = None) -> tuple[dict, torch.Tensor]:
    """Vote every scene of ``dataset`` (raw scenes: ``load_scene(i)`` or items without transform)
    and score against the original labels. Returns (scores, confusion (K, K))."""
    device = torch.device(device)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    count = len(dataset.items) if hasattr(dataset, "items") else len(dataset)
    try:
        for i in range(count):
            data = dataset.load_scene(i) if hasattr(dataset, "load_scene") else dataset[i]
            rng = np.random.default_rng([seed, i])
            probs = vote_scene(model, data, num_classes, grid_size=grid_size, prevoxel=prevoxel,
                               augmentations=augmentations, device=device, generator=generator, rng=rng, amp=amp,
                               amp_dtype=amp_dtype, fragments_per_pass=fragments_per_pass)
            target = torch.as_tensor(data["segment"]).to(device)
            confusion += confusion_matrix(probs.argmax(dim=-1), target, num_classes)
            report_progress(progress, "voting test (scenes)", i + 1, count)
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    confusion = confusion.cpu()
    return scores_from_confusion(confusion), confusion


def combine_folds(confusions: Mapping[str, object] | Iterable[object],
                  expected: Sequence[str] | None = ("Area_1", "Area_2", "Area_3", "Area_4", "Area_5", "Area_6"),
                  ) -> tuple[dict, np.ndarray]:
    """S3DIS 6-fold: sum the held-out areas' confusion matrices (rows truth, columns prediction),
    then score. With a mapping area -> matrix and ``expected`` set, every area must be present once."""
    if isinstance(confusions, Mapping):
        if expected is not None:
            missing = [a for a in expected if a not in confusions]
            extra = [a for a in confusions if a not in expected]
            if missing or extra:
                raise PeftbenchError(f"6-fold needs one result per held-out area {list(expected)}; "
                                     f"missing {missing or 'none'}, unexpected {extra or 'none'}")
        matrices = list(confusions.values())
    else:
        matrices = list(confusions)
    if not matrices:
        raise PeftbenchError("combine_folds: no confusion matrix given")
    arrays = [np.asarray(m, dtype=np.int64) for m in matrices]
    if any(a.shape != arrays[0].shape or a.ndim != 2 or a.shape[0] != a.shape[1] for a in arrays):
        raise PeftbenchError(f"combine_folds: confusion matrices must be square and of one shape, got "
                             f"{[a.shape for a in arrays]}")
    total = np.sum(arrays, axis=0)
    return scores_from_confusion(total), total


def check_protocol(protocol: str) -> str:
    if protocol not in TEST_PROTOCOLS:
        raise PeftbenchError(f"test_protocol must be one of {', '.join(TEST_PROTOCOLS)}, got {protocol!r}")
    return protocol


__all__ = ["RotateScale", "TEST_PROTOCOLS", "check_protocol", "combine_folds", "evaluate_voting",
           "test_augmentations", "vote_scene"]
