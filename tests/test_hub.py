"""Sonata weights by Hub name: names are told from paths, a pre-filled HF cache is used offline
(no network in tests) and loaded strictly, and a missing file is one line saying what to fetch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import MICRO
from peftbench.backbone import backbone_config
from peftbench.backbone.checkpoint import save_sonata_checkpoint
from peftbench.data.sources import resolve_file
from peftbench.errors import PeftbenchError
from peftbench.hub import HubFile, hub_cache_dir, hub_reference
from peftbench.model import Segmentor
from peftbench.train.trial import build_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache: Path, repo: str, filename: str, model: Segmentor) -> Path:
    """Lay a file out as huggingface_hub's cache does: refs/main -> snapshots/<commit>/<file>."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    path = folder / "snapshots" / COMMIT / filename
    save_sonata_checkpoint(path, model.backbone_config, model.backbone.state_dict())
    return path


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache


def test_names_and_paths_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub_reference("facebook/sonata") == HubFile("facebook/sonata", "sonata.pth")
    assert hub_reference("facebook/sonata@v1") == HubFile("facebook/sonata", "sonata.pth", "v1")
    assert hub_reference("hf://facebook/sonata/sonata_small.pth") == HubFile("facebook/sonata", "sonata_small.pth")
    assert hub_reference("hf://org/repo@abc/sub/w.pth") == HubFile("org/repo", "sub/w.pth", "abc")
    assert hub_reference(str(Path("hf://facebook/sonata/sonata.pth"))) == HubFile("facebook/sonata", "sonata.pth")
    for local in ("ckpt/model.pth", "/abs/sonata.pth", "sonata.pth", "a/b/c", ".cache/x"):
        assert hub_reference(local) is None, local
    (tmp_path / "facebook").mkdir()
    (tmp_path / "facebook" / "sonata").write_bytes(b"")
    assert hub_reference("facebook/sonata") is None  # an existing local path always wins


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub_cache_dir() == tmp_path / "c"


@pytest.mark.parametrize("name", ["facebook/sonata", "hf://facebook/sonata/sonata.pth", "${SONATA_CHECKPOINT}"])
def test_checkpoint_by_name_loads_strictly_from_the_cache(offline_cache, monkeypatch, name):
    config = backbone_config("tiny", **MICRO)
    torch.manual_seed(3)
    pretrained = Segmentor(config, 5)
    cached = fill_cache(offline_cache, "facebook/sonata", "sonata.pth", pretrained)
    monkeypatch.setenv("SONATA_CHECKPOINT", "facebook/sonata")

    assert resolve_file(name, "backbone.checkpoint") == cached
    spec = {"backbone": {"config": "checkpoint", "checkpoint": name, "overrides": {}}}
    model = build_model(spec, 5)
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key


def test_strict_load_still_refuses_a_mismatched_file_by_name(offline_cache):
    fill_cache(offline_cache, "facebook/sonata", "sonata.pth", Segmentor(backbone_config("tiny", **MICRO), 5))
    spec = {"backbone": {"config": "tiny", "checkpoint": "facebook/sonata", "overrides": {}}}  # wider model
    with pytest.raises(PeftbenchError):
        build_model(spec, 5)


def test_offline_and_not_cached_is_one_line_saying_what_to_download(offline_cache):
    with pytest.raises(PeftbenchError) as caught:
        resolve_file("facebook/sonata", "backbone.checkpoint")
    message = str(caught.value)
    assert "\n" not in message
    assert "hf download facebook/sonata sonata.pth" in message and str(offline_cache) in message
    assert "backbone.checkpoint" in message and "HF_HUB_OFFLINE" in message
