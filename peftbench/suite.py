"""Suite YAML -> typed, validated config -> trial specs (method × dataset × split × seed).

Every error names the file and the key, and all of them surface before any trial starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from peftbench.cache import cache_dir
from peftbench.builtin_suites import locate_suite
from peftbench.data.datasets import dataset_kind
from peftbench.errors import PeftbenchError
from peftbench.registry import discover, get_method
from peftbench.schema import build
from peftbench.search_config import FinalSpec, method_search
from peftbench.train.config import TrainConfig

SPLIT_PATTERN = re.compile(r"^(full|scenes-\d+(\.\d+)?|points-\d+)$")


@dataclasses.dataclass
class DatasetSpec:
    name: str                                 # "synthetic" or a Pointcept-layout dataset kind
    root: str
    domain: str | None = None                 # synthetic: "source" | "target"
    scenes: dict[str, int] | None = None      # synthetic: scenes to generate per split
    points_per_m2: float | None = None        # synthetic: sampling density
    label: str | None = None                  # name shown in reports (default: name, or name-domain)
    train_split: str = "train"
    val_split: str = "val"
    data_seed: int = 0                        # synthetic: generation seed
    train: dict[str, Any] = dataclasses.field(default_factory=dict)   # per-dataset training overrides
    group: str | None = None                  # folds of one score (S3DIS 6-fold): reports sum their confusions

    @property
    def display(self) -> str:
        return self.label or (f"{self.name}-{self.domain}" if self.domain else self.name)


@dataclasses.dataclass
class MethodEntry:
    name: str
    label: str | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)   # per-method training overrides
    search: dict[str, Any] | None = None      # merged over the suite's `search` (peftbench.search_config)


@dataclasses.dataclass
class BackboneSpec:
    config: str = "tiny"
    checkpoint: str | None = None             # a .pth path, or "pretrain" for the suite's pretraining stage
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    strict: bool = True
    drop_decoder: bool = False                # load an encoder-only model from a file with a decoder
    conv_backend: str = "auto"                # auto | torch | spconv


@dataclasses.dataclass
class PretrainSpec:
    dataset: DatasetSpec
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0


@dataclasses.dataclass
class Resources:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    checkpoint_every: int | None = None       # epochs between trial checkpoints; None: at each validation
    max_failures: int = 2                     # Ray retries of a trial that crashed (never of a user error)


@dataclasses.dataclass
class ReportTable:
    title: str                                # e.g. "Table 6b: number of latents"
    rows: list[str]                           # method labels, in row order
    names: dict[str, str] = dataclasses.field(default_factory=dict)  # label -> row name ("m = 1")


@dataclasses.dataclass
class ReportSpec:
    """How `peftbench report` lays out this suite's runs (logged with each run: never re-runs)."""
    baseline: str | None = None               # label differences and ratios are taken against (default linear)
    tables: list[ReportTable] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Suite:
    name: str
    datasets: list[DatasetSpec]
    methods: list[MethodEntry]
    experiment: str | None = None
    description: str = ""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    splits: list[str] = dataclasses.field(default_factory=lambda: ["full"])
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    backbone: BackboneSpec = dataclasses.field(default_factory=BackboneSpec)
    pretrain: PretrainSpec | None = None
    resources: Resources = dataclasses.field(default_factory=Resources)
    methods_dir: list[str] = dataclasses.field(default_factory=list)
    report: ReportSpec | None = None
    search: dict[str, Any] | None = None      # search, then `final` seeds: peftbench.search_config
    final: FinalSpec | None = None
    source: str = ""                          # the file it came from (set by load_suite)

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name


def load_suite(path: str | Path, extra_methods_dirs: list[str] = ()) -> Suite:
    path = locate_suite(path)  # a file, or a built-in suite by name (`peftbench run demo`)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PeftbenchError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from err
    return parse_suite(raw, str(path), extra_methods_dirs)


def parse_suite(raw: Any, where: str, extra_methods_dirs: list[str] = ()) -> Suite:
    if isinstance(raw, dict) and isinstance(raw.get("methods"), list):
        raw = dict(raw, methods=[{"name": m} if isinstance(m, str) else m for m in raw["methods"]])
    suite: Suite = build(Suite, raw, where)
    suite.source = where
    # methods_dir entries are relative to the working directory, else to the suite's folder.
    base = Path(where).resolve().parent
    suite.methods_dir = [str(Path(p) if Path(p).exists() else base / p)
                         for p in [*suite.methods_dir, *extra_methods_dirs]]
    try:
        discover(suite.methods_dir)
    except PeftbenchError as err:
        raise PeftbenchError(f"{where}: methods_dir: {err}") from err
    _validate(suite, where)
    return suite


def _validate(suite: Suite, where: str) -> None:
    if not suite.methods or not suite.datasets or not suite.seeds:
        raise PeftbenchError(f"{where}: methods, datasets and seeds must each list at least one entry")
    build(TrainConfig, suite.train, f"{where}: train")
    for i, dataset in enumerate(suite.datasets):
        try:
            dataset_kind(dataset.name)
        except PeftbenchError as err:
            raise PeftbenchError(f"{where}: datasets[{i}].name: {err}") from err
    labels = set()
    for i, entry in enumerate(suite.methods):
        key = f"{where}: methods[{i}]"
        try:
            cls = get_method(entry.name)
        except PeftbenchError as err:
            raise PeftbenchError(f"{key}.name: {err}") from err
        build(cls.config_class, entry.settings, f"{key}.settings")  # unknown keys and wrong types (`rank: eight`)
        for d, dataset in enumerate(suite.datasets):
            blame = f"{key}.train" if entry.train else f"{where}: datasets[{d}].train"
            train = build(TrainConfig, {**suite.train, **dataset.train, **entry.train}, blame)
            _check_data_parallel(train.data_parallel, suite.resources, blame)
        search = method_search(suite.search, entry.search, f"{key}.search" if entry.search else f"{where}: search")
        for point in search.points() if search else []:
            for dataset in suite.datasets:
                build(TrainConfig, {**suite.train, **dataset.train, **entry.train, **point}, f"{key}: search {point}")
        label = entry.label or entry.name
        if label in labels:
            raise PeftbenchError(f"{key}: label {label!r} is used twice; give one entry a distinct `label`")
        labels.add(label)
    for i, split in enumerate(suite.splits):
        if not SPLIT_PATTERN.match(split):
            raise PeftbenchError(f"{where}: splits[{i}]: {split!r} is not a split; use full, scenes-<percent> "
                                 "or points-<labelled points per scene>")
    _validate_report(suite, labels, where)
    _validate_resources(suite.resources, where)
    if suite.backbone.checkpoint == "pretrain" and suite.pretrain is None:
        raise PeftbenchError(f"{where}: backbone.checkpoint: 'pretrain' needs a `pretrain` section")
    if suite.pretrain is not None:
        build(TrainConfig, suite.pretrain.train, f"{where}: pretrain.train")


def _validate_report(suite: Suite, labels: set[str], where: str) -> None:
    """Every label the report block names must be a method label of this suite."""
    if suite.report is None:
        return
    known = ", ".join(sorted(labels))
    named = [("report.baseline", suite.report.baseline)] if suite.report.baseline else []
    for i, table in enumerate(suite.report.tables):
        named += [(f"report.tables[{i}].rows[{j}]", label) for j, label in enumerate(table.rows)]
        named += [(f"report.tables[{i}].names.{label}", label) for label in table.names]
    for key, label in named:
        if label not in labels:
            raise PeftbenchError(f"{where}: {key}: {label!r} is not a method label of this suite (labels: {known})")


def _validate_resources(res: Resources, where: str) -> None:
    if res.checkpoint_every is not None and res.checkpoint_every < 1:
        raise PeftbenchError(f"{where}: resources.checkpoint_every: {res.checkpoint_every} is not a number of epochs; "
                             "use 1 or more, or leave it out to checkpoint at each validation")
    if res.max_failures < 0:
        raise PeftbenchError(f"{where}: resources.max_failures: {res.max_failures}; use 0 (no retry) or more")


def _check_data_parallel(processes: int, resources: Resources, where: str) -> None:
    """A data-parallel trial gives each of its processes one GPU (or runs on CPU, gloo)."""
    gpus = resources.gpus_per_trial
    if processes > 1 and gpus > 0 and gpus != processes:
        raise PeftbenchError(f"{where}.data_parallel: {processes} processes but resources.gpus_per_trial is {gpus:g}; "
                             f"set gpus_per_trial: {processes} (one GPU per process, batch 24 = 8 x 3)")


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain_spec(suite: Suite) -> dict[str, Any] | None:
    """The resolved pretraining stage; its checkpoint path is keyed by the hash of its config."""
    if suite.pretrain is None:
        return None
    spec = {
        "kind": "pretrain",
        "backbone": {"config": suite.backbone.config, "overrides": suite.backbone.overrides,
                     "conv_backend": suite.backbone.conv_backend},
        "dataset": dataclasses.asdict(suite.pretrain.dataset),
        "train": dataclasses.asdict(build(TrainConfig, suite.pretrain.train, "pretrain.train")),
        "seed": suite.pretrain.seed,
    }
    spec["fingerprint"] = fingerprint(spec)
    spec["checkpoint"] = str(cache_dir() / "pretrain" / f"{suite.backbone.config}-{spec['fingerprint']}.pth")
    return spec


def trial_specs(suite: Suite) -> list[dict[str, Any]]:
    """One resolved config per trial; ``fingerprint`` is the hash of everything that shapes it."""
    pre = pretrain_spec(suite)
    checkpoint = pre["checkpoint"] if suite.backbone.checkpoint == "pretrain" else suite.backbone.checkpoint
    specs = []
    for dataset in suite.datasets:
        for split in suite.splits:
            for entry in suite.methods:
                # Overrides from general to specific: suite, then dataset, then method entry.
                merged = {**suite.train, **dataset.train, **entry.train}
                train = dataclasses.asdict(build(TrainConfig, merged, "train"))
                for seed in suite.seeds:
                    spec = {
                        "kind": "trial",
                        "suite": suite.name,
                        "method": {"name": entry.name, "label": entry.label or entry.name,
                                   "settings": entry.settings},
                        "dataset": dataclasses.asdict(dataset) | {"label": dataset.display},
                        "split": split,
                        "seed": seed,
                        "train": train,
                        "backbone": dataclasses.asdict(suite.backbone) | {"checkpoint": checkpoint},
                        "pretrain_fingerprint": pre["fingerprint"] if pre else None,
                    }
                    spec["fingerprint"] = fingerprint(spec)
                    # After the fingerprint: a new report layout must not re-run a finished trial.
                    spec["report"] = dataclasses.asdict(suite.report) if suite.report else None
                    spec["methods_dir"] = [str(Path(p).resolve()) for p in suite.methods_dir]
                    spec["run_name"] = f"{spec['method']['label']}/{dataset.display}/{split}/s{seed}"
                    specs.append(spec)
    return specs
