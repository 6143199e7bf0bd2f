"""Checkpoints by Hugging Face Hub name: ``facebook/sonata`` (the repo's ``sonata.pth``, as Sonata's
own ``load("sonata")`` does), ``hf://facebook/sonata/sonata.pth`` or ``hf://owner/repo@revision/path``.

Files go to the standard HF cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``) through ``huggingface_hub``, so other HF tools share them. With
``HF_HUB_OFFLINE=1`` only the cache is read, and a missing file is one line saying what to
download and where. A local file of the same name always wins.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from peftbench.errors import PeftbenchError

# owner/name as the Hub spells repo ids; an optional @revision.
_REPO = r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*"
_BARE = re.compile(rf"^(?P<repo>{_REPO})(?:@(?P<revision>[\w./-]+))?$")
# hf://owner/name[@revision]/path/in/repo (pathlib collapses "//", so "hf:/" is accepted too)
_URL = re.compile(rf"^hf:/+(?P<repo>{_REPO})(?:@(?P<revision>[\w.-]+))?/(?P<filename>.+)$")
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"hf://{self.repo_id}{at}/{self.filename}"


def hub_reference(text: str) -> HubFile | None:
    """The Hub file named by ``text``, or None for a local path (an existing path is always local).

    A bare ``owner/name`` names the repo's ``<name>.pth``; something that looks like a file
    (``ckpt/model.pth``) is a local path, never a repo."""
    text = str(text).strip()
    match = _URL.match(text)
    if match:
        return HubFile(match["repo"], match["filename"], match["revision"])
    match = _BARE.match(text)
    if match is None or Path(text).exists() or text.lower().endswith(_CHECKPOINT_SUFFIXES):
        return None
    repo = match["repo"]
    return HubFile(repo, f"{repo.split('/')[1]}.pth", match["revision"])


def hub_cache_dir() -> Path:
    """The HF hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_HUB_CACHE"]))
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expanduser(home)) / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def fetch_hub_file(ref: HubFile, setting: str) -> Path:
    """The local path of ``ref``: from the cache, downloading it first unless offline."""
    try:
        import huggingface_hub
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as err:
        raise PeftbenchError(f"{setting} names {ref} on the Hugging Face Hub but huggingface_hub is not "
                             "installed: pip install huggingface_hub, or set a local file") from err
    cache = hub_cache_dir()
    how = (f"download it with `hf download {ref.repo_id} {ref.filename} --cache-dir {cache}`"
           f"{f' --revision {ref.revision}' if ref.revision else ''} on a machine with internet (then copy {cache}), "
           f"or set {setting} to a local file")
    if hub_offline():
        found = huggingface_hub.try_to_load_from_cache(ref.repo_id, ref.filename, cache_dir=cache,
                                                       revision=ref.revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
        raise PeftbenchError(f"{setting}: {ref} is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set: "
                             f"{how}")
    try:
        return Path(huggingface_hub.hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision,
                                                    cache_dir=cache, library_name="peftbench"))
    except LocalEntryNotFoundError as err:  # no connection and not cached
        raise PeftbenchError(f"{setting}: cannot reach the Hugging Face Hub for {ref} and it is not in the cache "
                             f"{cache}: {how}") from err
    except EntryNotFoundError as err:
        raise PeftbenchError(f"{setting}: the Hub repo {ref.repo_id} has no file {ref.filename}; "
                             f"name the file as hf://{ref.repo_id}/<file>") from err
    except HfHubHTTPError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PeftbenchError(f"{setting}: could not download {ref}: {first}") from err
