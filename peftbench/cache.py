"""The scratch folder of peftbench and Ray (pretrained stages, Ray's storage and temp files, locks):
``$PEFTBENCH_CACHE``, default ``.cache/peftbench`` in the working folder."""

from __future__ import annotations

import os
from pathlib import Path

from peftbench.errors import PeftbenchError

CACHE_ENV = "PEFTBENCH_CACHE"
DEFAULT_CACHE = ".cache/peftbench"


def cache_dir() -> Path:
    """As given (relative stays relative: the default enters pretrained checkpoint paths in fingerprints)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed; a one-line error if that fails or the folder is read-only."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PeftbenchError(f"cannot create the {what} folder {path} ({err.strerror}); {_hint(what)}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise PeftbenchError(f"the {what} folder {path} is read-only; {_hint(what)}")
    return path


def _hint(what: str) -> str:
    if what == "cache":
        return f"set {CACHE_ENV} to a writable folder"
    return "run from a writable folder or pass --tracking-uri sqlite:////writable/path/mlflow.db"
