"""Our PTv3 against outputs of the reference (facebookresearch/sonata ``sonata/model.py``), on CPU.

``fixtures/ptv3_reference_tiny.pt`` was written by ``scripts/reference_identity.py --fixture`` on
the GPU machine: a small config with Sonata's structure and a decoder, the reference's random
weights (Sonata release format), two small scenes and the reference's outputs of every encoder
level and of the decoder (fp32, drop-path 0). Here our model runs with the torch sparse conv.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peftbench.backbone import Point, PointTransformerV3
from peftbench.backbone import sparse_conv
from peftbench.backbone.checkpoint import load_backbone_state, read_backbone_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "ptv3_reference_tiny.pt"
TOL = 1e-4  # max |ours - ref| <= TOL * max |ref|, per level


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.fixture(autouse=True)
def conv_backend():
    saved = sparse_conv._default_backend
    sparse_conv.set_default_backend("torch")
    yield
    sparse_conv.set_default_backend(saved)


def build(fixture: dict, case: str, **extra) -> PointTransformerV3:
    config = {**fixture["config"], **fixture["cases"][case]["overrides"], **extra}
    model = PointTransformerV3(**config)
    ckpt = read_backbone_checkpoint(FIXTURE)
    load_backbone_state(model, ckpt.state, source=str(FIXTURE), fmt=ckpt.format, drop_decoder=config["enc_mode"])
    return model


def run(model: PointTransformerV3, fixture: dict, train: bool, seed: int | None) -> dict[str, torch.Tensor]:
    model.train(train)
    levels: dict[str, torch.Tensor] = {}
    handles = [stage.register_forward_hook(lambda m, i, out, name=name: levels.__setitem__(name, out.feat.clone()))
               for name, stage in model.enc.named_children()]
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            point = model(Point({k: v.clone() for k, v in fixture["input"].items()}), gen)
    finally:
        for h in handles:
            h.remove()
    levels["out"] = point.feat
    return levels


def errors(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {}
    for name, r in ref.items():
        o = ours[name]
        assert o.shape == r.shape, f"{name}: {tuple(o.shape)} vs reference {tuple(r.shape)}"
        out[name] = float((o.double() - r.double()).abs().max() / r.abs().max())
    return out


def test_fixture_is_small_and_reads_as_a_sonata_file(fixture) -> None:
    assert FIXTURE.stat().st_size < 2_000_000
    ckpt = read_backbone_checkpoint(FIXTURE)  # made by the reference code: loads strictly
    assert ckpt.format == "sonata" and len(ckpt.state) == len(fixture["state_dict"])
    assert "sonata/model.py" in fixture["meta"]["reference"]
    assert set(fixture["cases"]) == {"fallback", "small-patch", "shuffle"}
    assert not fixture["config"]["enc_mode"] and any(k.startswith("dec.") for k in fixture["state_dict"])


CASES = [("fallback", False, "eval"), ("fallback", False, "train"),
         ("small-patch", False, "eval"), ("small-patch", True, "eval"), ("small-patch", True, "train"),
         ("shuffle", False, "eval"), ("shuffle", False, "train")]


@pytest.mark.parametrize(("case", "flash", "mode"), CASES, ids=[f"{c}-{'flash' if f else 'fallback'}-{m}"
                                                                  for c, f, m in CASES])
def test_matches_reference(fixture, case, flash, mode) -> None:
    """Every encoder level and the decoder output within 1e-4 of the reference.

    ``small-patch`` uses patches no larger than the smallest scene at each level, where the
    flash path's padding equals the fallback's, so our ``enable_flash=True`` must match too.
    """
    outputs = fixture["cases"][case]["outputs"]
    ref = outputs.get(mode, outputs["eval"])  # train-mode reference outputs stored for "fallback"
    model = build(fixture, case, enable_flash=flash)
    errs = errors(run(model, fixture, mode == "train", fixture["cases"][case]["shuffle_seed"]), ref)
    assert set(errs) == {"enc0", "enc1", "enc2", "enc3", "enc4", "out"}
    assert max(errs.values()) <= TOL, errs


def test_encoder_only_model_matches_reference_levels(fixture) -> None:
    """The same file into an enc_mode backbone (decoder dropped on request): the encoder levels match."""
    model = build(fixture, "fallback", enc_mode=True)
    assert not hasattr(model, "dec")
    ref = {k: v for k, v in fixture["cases"]["fallback"]["outputs"]["eval"].items() if k != "out"}
    errs = errors(run(model, fixture, False, None), ref)
    assert len(errs) == 5 and max(errs.values()) <= TOL, errs


def test_check_is_sensitive(fixture) -> None:
    """The comparison can fail: one changed bias, or the flash rule where the fallback shrinks the patch."""
    ref = fixture["cases"]["fallback"]["outputs"]["eval"]
    model = build(fixture, "fallback")
    with torch.no_grad():
        model.enc.enc3.block1.cpe[0].bias.add_(1e-2)
    errs = errors(run(model, fixture, False, None), ref)
    assert errs["enc2"] <= TOL < errs["enc3"]
    # Deep levels have scenes smaller than the patch (64): the reference's fallback shrinks the
    # patch to the smallest scene, the flash path does not, so enable_flash=True must differ there.
    errs = errors(run(build(fixture, "fallback", enable_flash=True), fixture, False, None), ref)
    assert errs["enc0"] <= TOL < max(errs["enc3"], errs["enc4"])
    # Another seed draws other orders than the reference did.
    shuffle = fixture["cases"]["shuffle"]
    ours = run(build(fixture, "shuffle"), fixture, False, shuffle["shuffle_seed"] + 1)
    errs = errors(ours, shuffle["outputs"]["eval"])
    assert max(errs.values()) > TOL


@pytest.mark.skipif(not sparse_conv.spconv_available(), reason="spconv not importable")
def test_spconv_backend_matches_reference(fixture) -> None:
    """The whole network with CPU spconv (bias added outside the conv) equals the same reference."""
    sparse_conv.set_default_backend("spconv")
    model = build(fixture, "fallback")
    errs = errors(run(model, fixture, False, None), fixture["cases"]["fallback"]["outputs"]["eval"])
    assert max(errs.values()) <= TOL, errs
