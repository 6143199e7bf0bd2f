"""Checkpoint I/O (Sonata release, Pointcept training / pre-training), strictness, the mask_token and
decoder rules, Sonata's full sizes, and reproducible order shuffling."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MICRO, random_scene_batch
from peftbench.backbone import PointTransformerV3, backbone_config
from peftbench.backbone.checkpoint import (
    load_backbone_state,
    read_backbone_checkpoint,
    read_checkpoint,
    save_sonata_checkpoint,
)
from peftbench.errors import PeftbenchError

MICRO_DEC = dict(MICRO, dec_depths=(1, 1, 1, 1), dec_channels=(8, 16, 16, 32), dec_num_head=(1, 1, 1, 2),
                 dec_patch_size=(32, 32, 32, 32))


def micro(**overrides) -> dict:
    return backbone_config("tiny", **{**MICRO, **overrides})


def micro_dec(**overrides) -> dict:
    return backbone_config("tiny-dec", **{**MICRO_DEC, **overrides})


def random_model(config: dict, seed: int = 0) -> PointTransformerV3:
    """A backbone whose every tensor is random (no bias left at 0), to tell loads apart."""
    torch.manual_seed(seed)
    model = PointTransformerV3(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert set(own) == set(state)
    for k, v in state.items():
        assert torch.equal(own[k], v), k


@pytest.fixture
def sonata_file(tmp_path) -> tuple[Path, dict, dict]:
    config = micro()
    state = random_model(config).state_dict()
    path = tmp_path / "sonata.pth"
    save_sonata_checkpoint(path, config, state)
    return path, config, state


# ---------------------------------------------------------------------------- Sonata format


def test_sonata_file_round_trip_loads_strictly(sonata_file) -> None:
    path, config, state = sonata_file
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"config", "state_dict"} and not any(k.startswith("module.") for k in raw["state_dict"])
    ckpt = read_backbone_checkpoint(path)
    assert ckpt.format == "sonata" and ckpt.prefix == "" and not ckpt.ignored
    assert ckpt.config["enc_channels"] == list(config["enc_channels"])
    model = PointTransformerV3(**ckpt.config)  # the file describes its own model (lists are fine)
    report = load_backbone_state(model, ckpt.state, source=str(path), fmt=ckpt.format)
    assert report.loaded == len(state) and not report.notes and not report.dropped
    assert_same_weights(model, state)
    cfg, st, fmt = read_checkpoint(path)  # the tuple API used by trial.build_model
    assert fmt == "sonata" and cfg == ckpt.config and st.keys() == state.keys()


def _load_error(path: Path, config: dict) -> str:
    ckpt = read_backbone_checkpoint(path)
    with pytest.raises(PeftbenchError) as err:
        load_backbone_state(PointTransformerV3(**config), ckpt.state, source=str(path), fmt=ckpt.format)
    return str(err.value)


def test_renamed_key_fails_naming_both(sonata_file, tmp_path) -> None:
    path, config, state = sonata_file
    state = dict(state)
    state["enc.enc2.block0.attn.qkv_w"] = state.pop("enc.enc2.block0.attn.qkv.weight")
    save_sonata_checkpoint(tmp_path / "renamed.pth", config, state)
    msg = _load_error(tmp_path / "renamed.pth", config)
    assert "1 missing (e.g. enc.enc2.block0.attn.qkv.weight)" in msg
    assert "1 unexpected (e.g. enc.enc2.block0.attn.qkv_w)" in msg
    assert "detected format: sonata" in msg and "renamed.pth" in msg
    assert "Possible renames: enc.enc2.block0.attn.qkv_w -> enc.enc2.block0.attn.qkv.weight" in msg


def test_missing_tensor_fails_with_count(sonata_file, tmp_path) -> None:
    path, config, state = sonata_file
    state = {k: v for k, v in state.items() if k != "enc.enc4.block0.cpe.0.bias"}
    save_sonata_checkpoint(tmp_path / "missing.pth", config, state)
    msg = _load_error(tmp_path / "missing.pth", config)
    assert "1 missing (e.g. enc.enc4.block0.cpe.0.bias)" in msg and "unexpected" not in msg
    assert "detected format: sonata" in msg


def test_wrong_shape_fails_with_shapes(sonata_file, tmp_path) -> None:
    path, config, state = sonata_file
    state = dict(state)
    state["enc.enc1.block0.cpe.0.weight"] = torch.zeros(16, 3, 3, 3, 8)  # in/out swapped: [out,3,3,3,in]
    save_sonata_checkpoint(tmp_path / "shape.pth", config, state)
    msg = _load_error(tmp_path / "shape.pth", config)
    assert "1 wrong shape (e.g. enc.enc1.block0.cpe.0.weight (16, 3, 3, 3, 8) != (16, 3, 3, 3, 16))" in msg


def test_many_offenders_listed_first_few_and_counted(sonata_file) -> None:
    path, _, _ = sonata_file
    msg = _load_error(path, micro(enc_channels=(8, 16, 16, 32, 64), enc_num_head=(1, 1, 1, 2, 4)))
    assert "wrong shape" in msg and "more)" in msg


def test_non_strict_load_reports_what_it_skipped(sonata_file) -> None:
    path, config, state = sonata_file
    state = {k: v for k, v in state.items() if k != "enc.enc0.block0.norm1.0.weight"}
    model = PointTransformerV3(**config)
    report = load_backbone_state(model, state, strict=False)
    assert report.missing == ["enc.enc0.block0.norm1.0.weight"] and report.loaded == len(state)


# ------------------------------------------------------------------------- Pointcept formats


def test_pointcept_training_checkpoint(sonata_file, tmp_path) -> None:
    _, config, state = sonata_file
    head = {"module.seg_head.weight": torch.randn(5, 32), "module.seg_head.bias": torch.randn(5)}
    raw = {"epoch": 3, "best_metric_value": np.float64(0.42),  # numpy scalar, as Pointcept writes it
           "state_dict": {**{f"module.backbone.{k}": v for k, v in state.items()}, **head},
           "optimizer": {"state": {}, "param_groups": [{"lr": 0.002, "params": [0, 1]}]}}
    torch.save(raw, tmp_path / "model_best.pth")
    ckpt = read_backbone_checkpoint(tmp_path / "model_best.pth")
    assert ckpt.format == "pointcept-train" and ckpt.prefix == "module.backbone." and ckpt.config is None
    assert sorted(ckpt.ignored) == sorted(head)  # the head is not the backbone's business
    model = PointTransformerV3(**config)
    load_backbone_state(model, ckpt.state, fmt=ckpt.format)
    assert_same_weights(model, state)


@pytest.mark.parametrize("prefix", ["module.", "backbone."])
def test_pointcept_other_training_prefixes(sonata_file, tmp_path, prefix) -> None:
    _, config, state = sonata_file
    torch.save({"state_dict": {prefix + k: v for k, v in state.items()}}, tmp_path / "c.pth")
    ckpt = read_backbone_checkpoint(tmp_path / "c.pth")
    assert ckpt.format == "pointcept-train" and ckpt.prefix == prefix
    model = PointTransformerV3(**config)
    load_backbone_state(model, ckpt.state, fmt=ckpt.format)
    assert_same_weights(model, state)


def test_pointcept_pretraining_checkpoint_takes_the_student(tmp_path, caplog) -> None:
    student = random_model(micro(mask_token=True), seed=1).state_dict()
    teacher = random_model(micro(mask_token=True), seed=2).state_dict()
    assert "embedding.mask_token" in student
    raw = {"state_dict": {**{f"module.student.backbone.{k}": v for k, v in student.items()},
                          **{f"module.teacher.backbone.{k}": v for k, v in teacher.items()},
                          "module.student.head.weight": torch.randn(4, 4), "module.mask_token": torch.zeros(1, 8)}}
    torch.save(raw, tmp_path / "pretrain.pth")
    ckpt = read_backbone_checkpoint(tmp_path / "pretrain.pth")
    assert ckpt.format == "pointcept-pretrain" and ckpt.prefix == "module.student.backbone."
    assert len(ckpt.ignored) == len(teacher) + 2
    # downstream backbone (mask_token=False): the mask token is dropped with a note, all else strict
    model = PointTransformerV3(**micro())
    with caplog.at_level(logging.INFO, logger="peftbench"):
        report = load_backbone_state(model, ckpt.state, source="pretrain.pth", fmt=ckpt.format)
    assert report.dropped == ["embedding.mask_token"] and "mask_token=False" in report.notes[0]
    assert "dropped embedding.mask_token" in caplog.text
    assert_same_weights(model, {k: v for k, v in student.items() if k != "embedding.mask_token"})
    # pre-training backbone (mask_token=True) keeps it
    model = PointTransformerV3(**micro(mask_token=True))
    report = load_backbone_state(model, ckpt.state, fmt=ckpt.format)
    assert not report.dropped
    assert_same_weights(model, student)


def test_mask_token_model_needs_the_key(sonata_file) -> None:
    _, _, state = sonata_file  # a downstream file: no mask token
    with pytest.raises(PeftbenchError, match=r"1 missing \(e.g. embedding.mask_token\)"):
        load_backbone_state(PointTransformerV3(**micro(mask_token=True)), state)


def test_bare_state_dict_and_unreadable_files(sonata_file, tmp_path) -> None:
    _, config, state = sonata_file
    torch.save(state, tmp_path / "bare.pth")
    ckpt = read_backbone_checkpoint(tmp_path / "bare.pth")
    assert ckpt.format == "unprefixed" and ckpt.config is None and len(ckpt.state) == len(state)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(PeftbenchError, match="no 'state_dict' entry"):
        read_backbone_checkpoint(tmp_path / "list.pth")
    with pytest.raises(PeftbenchError, match="checkpoint not found"):
        read_backbone_checkpoint(tmp_path / "nope.pth")


class Payload:
    """Any pickled object: weights_only=True must refuse to build it."""


def test_weights_only_refuses_arbitrary_objects(sonata_file, tmp_path) -> None:
    _, _, state = sonata_file
    torch.save({"state_dict": state, "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(PeftbenchError, match="weights_only=True"):
        read_backbone_checkpoint(tmp_path / "evil.pth")


# ----------------------------------------------------------------------------- decoder rules


def test_decoder_checkpoint_into_encoder_only_backbone(tmp_path) -> None:
    dec_state = random_model(micro_dec()).state_dict()
    assert any(k.startswith("dec.") for k in dec_state)
    enc = PointTransformerV3(**micro())
    with pytest.raises(PeftbenchError, match=r"decoder \(\d+ dec\.\* tensors\).*drop_decoder=True"):
        load_backbone_state(enc, dec_state, fmt="sonata")
    report = load_backbone_state(enc, dec_state, drop_decoder=True)
    assert len(report.dropped) == sum(k.startswith("dec.") for k in dec_state) and "drop_decoder" in report.notes[0]
    assert_same_weights(enc, {k: v for k, v in dec_state.items() if not k.startswith("dec.")})


def test_encoder_checkpoint_into_decoder_backbone(tmp_path) -> None:
    enc_state = random_model(micro(), seed=3).state_dict()
    model = random_model(micro_dec(), seed=4)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("dec.")}
    report = load_backbone_state(model, enc_state)  # Sonata's dec/ft recipe: fresh decoder
    assert set(report.kept_init) == set(before) and "no decoder" in report.notes[0]
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in enc_state.items())
    assert all(torch.equal(own[k], v) for k, v in before.items())
    with pytest.raises(PeftbenchError, match="no decoder"):
        load_backbone_state(model, enc_state, fresh_decoder=False)
    # the encoder part is still strict
    broken = {k: v for k, v in enc_state.items() if k != "enc.enc1.down.proj.bias"}
    with pytest.raises(PeftbenchError, match=r"1 missing \(e.g. enc.enc1.down.proj.bias\)"):
        load_backbone_state(model, broken)
    # a partial decoder is an error
    partial = {**enc_state, "dec.dec0.up.proj.0.weight": own["dec.dec0.up.proj.0.weight"]}
    with pytest.raises(PeftbenchError, match="missing"):
        load_backbone_state(model, partial)


# ------------------------------------------------------------------------ trial integration


def test_build_model_from_sonata_file(sonata_file) -> None:
    from peftbench.train.trial import build_model

    path, config, state = sonata_file
    for name in ("checkpoint", "tiny"):
        spec = {"backbone": {"config": name, "checkpoint": str(path),
                             "overrides": {} if name == "checkpoint" else dict(MICRO)}}
        model = build_model(spec, num_classes=5)
        assert_same_weights(model.backbone, state)
    spec = {"backbone": {"config": "tiny", "checkpoint": str(path)}}  # tiny's real widths: does not fit
    with pytest.raises(PeftbenchError, match="detected format: sonata"):
        build_model(spec, num_classes=5)


# ------------------------------------------------------------------------------ full sizes


def _meta_model(name: str) -> PointTransformerV3:
    with torch.device("meta"):
        return PointTransformerV3(**backbone_config(name))


def test_sonata_encoder_size_and_keys() -> None:
    model = _meta_model("sonata")
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == 108_461_328
    assert len(state) == 452 and not list(model.buffers())
    parts = {"embedding": 576, "enc.enc0": 278_928, "enc.enc1": 1_115_712, "enc.enc2": 4_452_480,
             "enc.enc3": 70_932_096, "enc.enc4": 31_681_536}
    for prefix, n in parts.items():
        assert sum(v.numel() for k, v in state.items() if k.startswith(prefix + ".")) == n, prefix
    shapes = {
        "embedding.stem.linear.weight": (48, 9), "embedding.stem.linear.bias": (48,),
        "embedding.stem.norm.weight": (48,), "embedding.stem.norm.bias": (48,),
        "enc.enc0.block0.cpe.0.weight": (48, 3, 3, 3, 48), "enc.enc0.block0.cpe.0.bias": (48,),
        "enc.enc0.block0.cpe.1.weight": (48, 48), "enc.enc0.block0.cpe.2.weight": (48,),
        "enc.enc0.block0.norm1.0.weight": (48,), "enc.enc0.block0.norm2.0.bias": (48,),
        "enc.enc0.block0.attn.qkv.weight": (144, 48), "enc.enc0.block0.attn.qkv.bias": (144,),
        "enc.enc0.block0.attn.proj.weight": (48, 48), "enc.enc0.block0.mlp.0.fc1.weight": (192, 48),
        "enc.enc0.block0.mlp.0.fc1.bias": (192,), "enc.enc0.block0.mlp.0.fc2.weight": (48, 192),
        "enc.enc1.down.proj.weight": (96, 48), "enc.enc1.down.proj.bias": (96,),
        "enc.enc1.down.norm.0.weight": (96,), "enc.enc1.down.norm.0.bias": (96,),
        "enc.enc3.block11.attn.qkv.weight": (1152, 384),
        "enc.enc4.block2.cpe.0.weight": (512, 3, 3, 3, 512), "enc.enc4.block2.attn.qkv.weight": (1536, 512),
        "enc.enc4.block2.mlp.0.fc1.weight": (2048, 512),
    }
    for k, shape in shapes.items():
        assert tuple(state[k].shape) == shape, k
    assert not any(k.startswith("dec.") or "mask_token" in k for k in state)
    blocks = {k.split(".block")[0] + "." + k.split(".")[2] for k in state if ".block" in k}
    assert len(blocks) == 24
    assert "embedding.mask_token" in _meta_state(mask_token=True)


def _meta_state(**overrides) -> dict:
    with torch.device("meta"):
        return PointTransformerV3(**backbone_config("sonata", **overrides)).state_dict()


def test_sonata_decoder_size_and_keys() -> None:
    model = _meta_model("sonata-dec")
    state = model.state_dict()
    dec = {k: v for k, v in state.items() if k.startswith("dec.")}
    assert sum(v.numel() for v in dec.values()) == 16_331_520
    assert sum(p.numel() for p in model.parameters()) == 124_792_848 and not list(model.buffers())
    assert list(dict.fromkeys(k.split(".")[1] for k in dec)) == ["dec3", "dec2", "dec1", "dec0"]
    shapes = {"dec.dec3.up.proj.0.weight": (384, 512), "dec.dec3.up.proj_skip.0.weight": (384, 384),
              "dec.dec3.up.proj.1.weight": (384,), "dec.dec0.block0.cpe.0.weight": (64, 3, 3, 3, 64),
              "dec.dec0.block0.attn.qkv.weight": (192, 64), "dec.dec0.block1.mlp.0.fc2.weight": (64, 256)}
    for k, shape in shapes.items():
        assert tuple(state[k].shape) == shape, k


# ----------------------------------------------------------------------------- determinism


def test_eval_shuffle_is_reproducible_with_a_generator() -> None:
    model = random_model(micro(shuffle_orders=True)).eval()
    batch = random_scene_batch(sizes=(300, 220), grid=12, seed=3)

    def run(seed: int | None) -> list[torch.Tensor]:
        from peftbench.backbone import Point

        gen = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.no_grad():
            point = model(Point({k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}), gen)
        feats = []
        while point is not None:
            feats.append(point.feat)
            point = point.get("pooling_parent")
        return feats

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # bit-identical
    assert not all(torch.allclose(x, y, atol=1e-4) for x, y in zip(a, c))  # another seed, other orders
    torch.manual_seed(5)
    d = run(None)
    torch.manual_seed(5)
    e = run(None)  # no generator: the global RNG, as the reference
    assert all(torch.equal(x, y) for x, y in zip(d, e))


def test_trial_records_conv_backend_and_loads_checkpoint(tmp_path, monkeypatch) -> None:
    """One tiny trial with ``backbone: {config, checkpoint}``: config.json names the backend used."""
    from peftbench.train.recorder import LocalRecorder
    from peftbench.train.trial import run_trial

    monkeypatch.chdir(tmp_path)
    config = micro()
    save_sonata_checkpoint(tmp_path / "bb.pth", config, random_model(config).state_dict())
    spec = {"kind": "trial", "seed": 0, "split": "full", "run_name": "t",
            "dataset": {"name": "synthetic", "domain": "target", "root": str(tmp_path / "data"),
                        "scenes": {"train": 2, "val": 1}, "points_per_m2": 15, "train_split": "train",
                        "val_split": "val", "data_seed": 0},
            "method": {"name": "linear", "settings": {}},
            "backbone": {"config": "tiny", "overrides": dict(MICRO), "checkpoint": str(tmp_path / "bb.pth"),
                         "conv_backend": "torch"},
            "train": {"epochs": 1, "batch_size": 2, "grid_size": 0.1, "point_max": 3000}}
    with LocalRecorder(tmp_path / "out") as recorder:
        run_trial(spec, recorder)
    resolved = json.loads((tmp_path / "out" / "config.json").read_text())["resolved"]
    assert resolved["conv_backend"] == "torch" and resolved["device"] == "cpu"
