"""A recorder with ``TrialRun``'s interface that writes plain files: for machines without MLflow
(the GPU machine) and for ``peftbench train --out DIR``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class LocalRecorder:
    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = self.out_dir.name
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}

    def __enter__(self) -> "LocalRecorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "FAILED"
        self.log_dict({"status": status, "metrics": self.metrics, "tags": self.tags,
                       "error": repr(exc) if exc else None},
                      "result.json")

    def log_epoch(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.out_dir / "history.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.metrics.update(metrics)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update({str(k): str(v) for k, v in tags.items()})

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        (self.out_dir / artifact_file).write_text(json.dumps(obj, indent=2, default=str))

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        (self.out_dir / artifact_file).write_bytes(data)
