"""Learning-rate groups: ``pointcept`` is Pointcept's keyword rule name by name; ``role`` by role."""

from __future__ import annotations

import pytest
import torch

from peftbench.backbone import backbone_config
from peftbench.model import Segmentor
from peftbench.registry import build_method
from peftbench.train.optim import parameter_groups

BASE_LR, BLOCK_LR = 0.002, 0.0002
SONATA_PARAM_DICTS = [{"keyword": "block", "lr": BLOCK_LR}]  # configs/sonata/semseg-sonata-v1m1-0a-scannet-lin.py


def pointcept_lr(name: str) -> float:
    """Pointcept's build_optimizer: the first param_dict whose keyword is in the name, else the base lr."""
    return next((d["lr"] for d in SONATA_PARAM_DICTS if d["keyword"] in name), BASE_LR)


def _sonata(method: str, backbone: str = "sonata"):
    with torch.device("meta"):  # shapes and names only
        model = Segmentor(backbone_config(backbone), 20)
        built = build_method(method)
        built.apply(model)
    return model, built


@pytest.mark.parametrize("method, backbone", [("gem", "sonata"), ("lora", "sonata"), ("adapter", "sonata"),
                                              ("bitfit", "sonata"), ("full", "sonata"), ("gem", "sonata-dec")])
def test_pointcept_groups_match_the_keyword_rule_name_by_name(method, backbone):
    model, built = _sonata(method, backbone)
    groups = parameter_groups(model, built, BASE_LR, BASE_LR, BLOCK_LR, rule="pointcept")
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(lr_of) == sorted(trainable)
    for name in trainable:
        assert lr_of[name] == pointcept_lr(name), name


def test_pointcept_puts_block_modules_at_the_backbone_rate():
    model, built = _sonata("gem", "sonata-dec")
    lr_of = {n: g["lr"] for g in parameter_groups(model, built, BASE_LR, BASE_LR, BLOCK_LR, "pointcept")
             for n in g["names"]}
    assert lr_of["backbone.enc.enc0.block0.cpe_branches.gem_sa.down.weight"] == BLOCK_LR
    assert lr_of["backbone.enc.enc4.block2.attn_branches.gem_ca.up.weight"] == BLOCK_LR
    assert lr_of["backbone.scene_state_init.gem_latents.latents"] == BASE_LR   # global latents: not in a block
    assert lr_of["seg_head.weight"] == BASE_LR
    # Table 4's decoder, as Sonata's 0b-dec config: its blocks at 2e-4, its unpooling at 2e-3.
    assert lr_of["backbone.dec.dec0.block0.attn.qkv.weight"] == BLOCK_LR
    assert lr_of["backbone.dec.dec0.up.proj.0.weight"] == BASE_LR
    full, built = _sonata("full")
    lr_of = {n: g["lr"] for g in parameter_groups(full, built, BASE_LR, BASE_LR, BLOCK_LR, "pointcept")
             for n in g["names"]}
    assert lr_of["backbone.embedding.stem.linear.weight"] == BASE_LR
    assert lr_of["backbone.enc.enc1.down.proj.weight"] == BASE_LR


def test_role_groups_give_method_parameters_their_own_rate():
    model, built = _sonata("gem")
    groups = {g["name"]: g for g in parameter_groups(model, built, BASE_LR, 0.005, BLOCK_LR, rule="role")}
    assert set(groups) == {"head", "method"} and groups["method"]["lr"] == 0.005
    assert all("gem_" in n for n in groups["method"]["names"])
