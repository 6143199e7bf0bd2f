"""``peftbench data check ROOT --dataset NAME``: is this folder the dataset a suite expects?

Reads every scene of every known split folder the way training will (same reader, same checks)
and reports splits, scene counts, point counts (min/median/max), the label histogram with class
names, the data-efficiency files found, and every problem: missing folders or files, shape
mismatches, labels outside the class range, missing normals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from peftbench.data.datasets import DatasetKind, dataset_kind
from peftbench.data.sources import KindDataset, expand_path
from peftbench.errors import PeftbenchError

MAX_PROBLEMS_SHOWN = 20
KNOWN_EXTRAS = ("tasks", "metadata", "splits", "meta_data")


@dataclass
class SplitStats:
    name: str
    labelled: bool
    scenes: int = 0
    points: list[int] = field(default_factory=list)
    histogram: np.ndarray | None = None   # (K,) points per class
    ignored: int = 0


@dataclass
class CheckResult:
    text: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def _split_stats(kind: DatasetKind, root: Path, split: str, problems: list[str]) -> SplitStats:
    reader_kind = dataclasses.replace(kind, require_normal=False)  # normals are checked here, grouped
    dataset = KindDataset(reader_kind, root, split)
    stats = SplitStats(split, labelled=dataset.label_file is not None)
    stats.histogram = np.zeros(kind.num_classes, dtype=np.int64)
    no_normal = []
    for index in range(len(dataset.items)):
        folder, scene = dataset.scene_folder(index)
        if kind.require_normal and not (folder / "normal.npy").is_file():
            no_normal.append(scene)
        try:
            data = dataset.load_scene(index)
        except PeftbenchError as err:
            problems.append(str(err))
            continue
        stats.scenes += 1
        stats.points.append(len(data["coord"]))
        if stats.labelled:
            segment = data["segment"]
            stats.ignored += int((segment == -1).sum())
            stats.histogram += np.bincount(segment[segment >= 0], minlength=kind.num_classes)
    if no_normal:
        problems.append(f"{len(no_normal)} of {len(dataset.items)} scenes of {split} lack normal.npy "
                        f"(e.g. {', '.join(no_normal[:3])}); {kind.normal_hint}")
    return stats


def _class_file_problems(kind: DatasetKind, root: Path) -> list[str]:
    if kind.name != "scannetpp":
        return []
    path = root / "metadata" / "semantic_benchmark" / "top100.txt"
    if not path.is_file():
        return []
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if tuple(names) == kind.classes:
        return []
    for i, (a, b) in enumerate(zip(names, kind.classes)):
        if a != b:
            return [f"{path}: class {i} is {a!r} but peftbench's ScanNet++ list has {b!r}; labels would be misnamed"]
    return [f"{path} lists {len(names)} classes; peftbench's ScanNet++ list has {kind.num_classes}"]


def _efficiency_files(root: Path) -> list[str]:
    lines = []
    for sub, pattern in (("scenes", "*.txt"), ("points", "points*")):
        folder = root / "tasks" / sub
        found = sorted(p.name for p in folder.glob(pattern)) if folder.is_dir() else []
        lines.append(f"  tasks/{sub}: {', '.join(found) if found else 'none (a seeded subset will be drawn)'}")
    return lines


def _histogram_lines(kind: DatasetKind, stats: list[SplitStats]) -> list[str]:
    labelled = [s for s in stats if s.labelled and s.scenes]
    if not labelled:
        return []
    width = max(len(c) for c in kind.classes)
    header = f"  {'id':>3}  {'class':<{width}}" + "".join(f"  {s.name[:21]:>21}" for s in labelled)
    lines = ["label histogram (points, % of labelled points):", header]
    totals = [max(int(s.histogram.sum()), 1) for s in labelled]
    for k, name in enumerate(kind.classes):
        cells = "".join(f"  {int(s.histogram[k]):>14,} {100 * s.histogram[k] / t:5.1f}%"
                        for s, t in zip(labelled, totals))
        lines.append(f"  {k:>3}  {name:<{width}}{cells}")
    lines.append(f"  {-1:>3}  {'(ignored)':<{width}}" + "".join(f"  {s.ignored:>14,}       " for s in labelled))
    absent = [kind.classes[k] for k in range(kind.num_classes) if all(s.histogram[k] == 0 for s in labelled)]
    if absent:
        more = f" and {len(absent) - 20} more" if len(absent) > 20 else ""
        lines.append(f"  {len(absent)} classes with no point in any split: {', '.join(absent[:20])}{more}")
    return lines


def inspect_dataset(root: str | Path, name: str) -> CheckResult:
    kind = dataset_kind(name)
    root = expand_path(root, "ROOT")
    problems: list[str] = []
    lines = [f"dataset {name} at {root}: {kind.num_classes} classes, labels {kind.label_file}"
             + (f" column {kind.label_column}" if kind.label_column is not None else "")
             + f", ignore -1, normals {'required' if kind.require_normal else 'optional'}"]
    if not root.is_dir():
        problems.append(f"dataset root not found: {root}")
        return CheckResult("\n".join(lines + ["problems (1):", f"  - {problems[0]}"]), problems)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    stats = []
    lines.append("splits:")
    for split in (*kind.splits, *kind.optional_splits):
        if split not in folders:
            if split in kind.splits:
                problems.append(f"split folder {root / split} is missing (expected splits: {', '.join(kind.splits)})")
                lines.append(f"  {split}: MISSING")
            continue
        try:
            s = _split_stats(kind, root, split, problems)
        except PeftbenchError as err:  # e.g. a split folder without scenes
            problems.append(str(err))
            lines.append(f"  {split}: unreadable")
            continue
        stats.append(s)
        tag = "" if s.labelled else " (unlabelled)"
        if s.points:
            p = np.asarray(s.points)
            lines.append(f"  {split}{tag}: {s.scenes} scenes, points per scene min {p.min():,} / median "
                         f"{int(np.median(p)):,} / max {p.max():,}, total {p.sum():,}")
        else:
            lines.append(f"  {split}{tag}: no readable scene")
    others = [f for f in folders if f not in (*kind.splits, *kind.optional_splits, *KNOWN_EXTRAS)]
    if others:
        lines.append(f"  other folders (not read): {', '.join(others)}")
    lines += _histogram_lines(kind, stats)
    lines.append("data-efficiency files:")
    lines += _efficiency_files(root)
    problems += _class_file_problems(kind, root)
    if problems:
        lines.append(f"problems ({len(problems)}):")
        lines += [f"  - {p}" for p in problems[:MAX_PROBLEMS_SHOWN]]
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    else:
        lines.append("no problems found")
    return CheckResult("\n".join(lines), problems)


def check_dataset(root: str | Path, name: str) -> str:
    """The report text; ``inspect_dataset`` also returns the problems (the CLI exits 2 on any)."""
    return inspect_dataset(root, name).text


__all__ = ["CheckResult", "check_dataset", "inspect_dataset"]
