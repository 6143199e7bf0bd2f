"""Everything checkable before the first trial (and by ``--dry-run``): the backbone config, the
checkpoint against it, the datasets, the resources. One line each, exit 2, before any experiment
is created -- instead of the same error inside every trial, buried in Ray's tracebacks.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from typing import Any

from peftbench.cache import cache_dir, writable_dir
from peftbench.errors import PeftbenchError
from peftbench.suite import Suite


def check_before_trials(suite: Suite, *, dry_run: bool = False, sequential: bool = False,
                        say: Callable[[str], None] = print) -> None:
    """Raise a PeftbenchError on the first problem. With ``dry_run``, what depends on the machine
    (a missing data root or checkpoint file, too few CPUs or GPUs) is a note: a suite is often
    listed on another machine than the one that runs it."""
    notes: list[str] = []
    note = notes.append if dry_run else None
    config = _backbone_config(suite)
    _check_checkpoint(suite, config, note)
    datasets = [dataclasses.asdict(d) | {"label": d.display} for d in suite.datasets]
    if suite.pretrain is not None:
        datasets.append(dataclasses.asdict(suite.pretrain.dataset) | {"label": "pretrain"})
    for dataset in datasets:
        _check_dataset(dataset, note)
    if not dry_run:
        writable_dir(cache_dir(), "cache")  # pretrained stages, Ray's files, locks
    if not sequential:
        _or_note(lambda: _in_file(suite.source, check_resources, suite.resources.cpus_per_trial,
                                  suite.resources.gpus_per_trial), note)
    for text in notes[:3]:
        say(f"note: not checked before a run: {text}")
    if len(notes) > 3:
        say(f"note: ... and {len(notes) - 3} more such notes")


def _in_file(source: str, check: Callable[..., Any], *args: Any) -> Any:
    try:
        return check(*args)
    except PeftbenchError as err:
        raise PeftbenchError(f"{source}: {err}") from err


def _or_note(check: Callable[[], Any], note: Callable[[str], None] | None) -> bool:
    """Run ``check``; with ``note`` its PeftbenchError becomes a note. True if it passed."""
    try:
        check()
        return True
    except PeftbenchError as err:
        if note is None:
            raise
        note(str(err))
        return False


def _backbone_config(suite: Suite) -> dict[str, Any] | None:
    """The backbone config the trials will build (None for ``config: checkpoint``: the file says)."""
    from peftbench.backbone import backbone_config

    bb = suite.backbone
    if bb.config == "checkpoint":
        return None
    try:
        config = backbone_config(bb.config, **bb.overrides)
    except PeftbenchError as err:
        raise PeftbenchError(f"{suite.source}: backbone.config: {err}") from err
    _meta_backbone(config, f"{suite.source}: backbone")  # unknown override keys fail here
    return config


def _meta_backbone(config: dict[str, Any], where: str) -> Any:
    """The backbone on the meta device: its state-dict keys and shapes, no memory, no init time."""
    import torch

    from peftbench.backbone import PointTransformerV3

    try:
        with torch.device("meta"):
            return PointTransformerV3(**config)
    except (TypeError, ValueError) as err:
        raise PeftbenchError(f"{where}: the backbone cannot be built from this config ({err}); "
                             "check backbone.overrides") from err


def _check_checkpoint(suite: Suite, config: dict[str, Any] | None, note: Callable[[str], None] | None) -> None:
    from peftbench.backbone.checkpoint import load_backbone_state, read_backbone_checkpoint
    from peftbench.data.sources import resolve_file

    bb = suite.backbone
    if bb.checkpoint in (None, "pretrain"):
        if bb.config == "checkpoint":
            raise PeftbenchError(f"{suite.source}: backbone.config: 'checkpoint' needs a checkpoint file")
        return
    if not _or_note(lambda: resolve_file(bb.checkpoint, "backbone.checkpoint"), note):
        return
    path = resolve_file(bb.checkpoint, "backbone.checkpoint")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":  # torch.save: a zip file, or a pickle
        raise PeftbenchError(f"{path} is not a PyTorch checkpoint (neither the zip nor the pickle format of "
                             "torch.save); set backbone.checkpoint to a .pth file")
    ckpt = read_backbone_checkpoint(path)  # the one read, weights_only=True
    if config is None:
        if ckpt.config is None:
            raise PeftbenchError(f"{path} ({ckpt.format}) carries no config; name one in backbone.config")
        config = {**ckpt.config, **bb.overrides}
    backbone = _meta_backbone(config, f"{suite.source}: backbone")
    with warnings.catch_warnings():  # copying into meta tensors is a no-op, as intended: keys and shapes only
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        load_backbone_state(backbone, ckpt.state, strict=bb.strict, source=str(path), fmt=ckpt.format,
                            drop_decoder=bb.drop_decoder)


def _check_dataset(dataset: dict[str, Any], note: Callable[[str], None] | None) -> None:
    from peftbench.data.sources import dataset_kind, expand_path, prepare_dataset

    dataset_kind(dataset["name"])  # unknown kind: one line listing the known ones
    if dataset["name"] != "synthetic":
        _or_note(lambda: prepare_dataset(dataset), note)  # real data: root and split folders
    elif note is None:  # synthetic data is generated by the run: its folder must be writable
        writable_dir(expand_path(dataset["root"], f"root of dataset {dataset['label']!r}"), "dataset")


def check_resources(cpus_per_trial: float, gpus_per_trial: float) -> int | None:
    """A trial larger than this machine would wait forever: refuse it. Returns the GPUs for Ray."""
    cpus = os.cpu_count() or 1
    if cpus_per_trial > cpus:
        raise PeftbenchError(f"resources.cpus_per_trial is {cpus_per_trial:g} but this machine has {cpus} CPUs; "
                             f"lower it to at most {cpus}")
    if gpus_per_trial <= 0:
        return None
    import torch

    gpus = torch.cuda.device_count()  # respects CUDA_VISIBLE_DEVICES, unlike NVML
    if gpus < gpus_per_trial:
        raise PeftbenchError(f"resources.gpus_per_trial is {gpus_per_trial:g} but {gpus} GPU(s) are visible "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                             "set resources.gpus_per_trial: 0 for CPU runs")
    return gpus
