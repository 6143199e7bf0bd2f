"""Method plugins: freezing, zero-init identity, what a training step changes, registry errors."""

from __future__ import annotations

import copy

import pytest
import torch

from peftbench.backbone.block import CPEConvBranch
from peftbench.errors import PeftbenchError
from peftbench.method import count_parameters, load_method_state_dict, method_state_dict
from peftbench.model import Segmentor
from peftbench.registry import available_methods, build_method, get_method
from peftbench.train.losses import segmentation_loss

PEFT_METHODS = ["gem", "sa", "ca"]


def _model(config, method, settings=None):
    torch.manual_seed(0)
    model = Segmentor(config, 5)
    build_method(method, settings).apply(model)
    return model


def _forward(model, batch, seed=0):
    inputs = {k: v for k, v in batch.items() if k != "segment"}
    return model(inputs, torch.Generator().manual_seed(seed))


def test_no_method_keeps_sonata_keys(micro_config):
    model = Segmentor(micro_config, 5)
    keys = list(model.backbone.state_dict())
    assert "enc.enc0.block0.cpe.0.weight" in keys and "enc.enc1.down.norm.0.weight" in keys
    assert model.backbone.state_dict()["enc.enc0.block0.cpe.0.weight"].shape == (8, 3, 3, 3, 8)
    assert not any("branches" in k or "post_mlp" in k or "scene_state" in k for k in keys)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_zero_init_method_equals_frozen_backbone(micro_config, scene_batch, method):
    base = _model(micro_config, "linear").eval()
    peft = Segmentor(micro_config, 5).eval()
    peft.load_state_dict(base.state_dict())
    build_method(method).apply(peft)
    assert sum(p.numel() for n, p in peft.named_parameters() if "gem_" in n) > 0
    ours, frozen = _forward(peft, scene_batch), _forward(base, scene_batch)
    # GEM's Spatial Adapter rides on the CPE's conv call (CPEConvBranch): the matmul with its columns
    # appended may round the CPE's columns differently (5e-7 of 0.53 here); every other method is exact
    shares_cpe_conv = any(isinstance(m, CPEConvBranch) for m in peft.modules())
    torch.testing.assert_close(ours, frozen, rtol=0, atol=1e-6 * frozen.abs().max().item() if shares_cpe_conv else 0)


@pytest.mark.parametrize("backend", ["torch", "gather"])
def test_spatial_adapter_through_the_cpe_conv_equals_its_own_conv(micro_config, scene_batch, backend):
    """GEM's SA rides on the CPE's conv call (weights W_o @ W_down); logits and every trainable gradient
    equal its own down -> conv path (float64), and its own conv is never called."""
    from peftbench.backbone.sparse_conv import SubMConv3d

    model = _model(micro_config, "gem").double().train()
    for module in model.modules():
        if isinstance(module, SubMConv3d):
            module.backend = backend
        if isinstance(module, CPEConvBranch):
            torch.nn.init.normal_(module.up.weight, std=0.5)  # zero-init would hide the branch
    adapters = [m for m in model.modules() if isinstance(m, CPEConvBranch)]
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in scene_batch.items()}

    def logits_and_grads():
        model.zero_grad()
        logits = _forward(model, batch)
        (logits * torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)).sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    own_conv_calls = []
    hooks = [a.conv.register_forward_hook(lambda *_: own_conv_calls.append(1)) for a in adapters]
    shared, shared_grads = logits_and_grads()
    assert not own_conv_calls
    for adapter in adapters:  # another kernel than the CPE's: the block calls the branch itself
        adapter.kernel_size = -1
    own, own_grads = logits_and_grads()
    assert len(own_conv_calls) == len(adapters)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(shared, own, rtol=1e-9, atol=1e-12)
    assert shared_grads.keys() == own_grads.keys() and any(".down." in n for n in shared_grads)
    for name in shared_grads:
        torch.testing.assert_close(shared_grads[name], own_grads[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("method", ["linear", "full", *PEFT_METHODS])
def test_training_step_changes_only_method_and_head(micro_config, scene_batch, method):
    model = _model(micro_config, method).train()
    before = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = segmentation_loss(_forward(model, scene_batch), scene_batch["segment"])
    loss.backward()
    optimizer.step()
    method_obj = get_method(method)()
    for name, tensor in model.state_dict().items():
        changed = not torch.equal(tensor, before[name])
        expected = method == "full" or name.startswith("seg_head.") or method_obj.owns(name)
        if not expected:
            assert not changed, f"{method}: frozen {name} changed"
    changed_names = [n for n, t in model.state_dict().items() if not torch.equal(t, before[n])]
    assert any(n.startswith("seg_head.") for n in changed_names)
    if method in PEFT_METHODS:
        # The zero-initialised up-projections get gradients and move in the first step.
        assert any("gem_" in n and n.endswith("up.weight") for n in changed_names)


def test_gem_latents_flow_per_scene(micro_config, scene_batch):
    model = _model(micro_config, "ca")
    for block in [b for _, b in model.backbone.encoder_blocks()]:
        torch.nn.init.normal_(block.attn_branches["gem_ca"].up.weight, std=0.1)
    out_pair = _forward(model.eval(), scene_batch)
    n0 = int(scene_batch["offset"][0])
    alone = {k: v for k, v in scene_batch.items()}
    alone.update({k: scene_batch[k][:n0] for k in ("coord", "grid_coord", "feat", "segment")})
    alone["offset"] = scene_batch["offset"][:1]
    # Attention patches and latents are per scene: scene 0 alone gives the same logits as in the batch
    # (up to order shuffling, fixed by the generator, and patch padding, which is per scene).
    torch.testing.assert_close(_forward(model, alone), out_pair[:n0], rtol=1e-4, atol=1e-5)


def test_method_state_roundtrip(micro_config, scene_batch):
    model = _model(micro_config, "gem")
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    state = method_state_dict(model)
    trainable, _ = count_parameters(model)
    assert sum(t.numel() for t in state.values()) == trainable
    fresh = Segmentor(micro_config, 5)
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if k in fresh.state_dict()}, strict=False)
    build_method("gem").apply(fresh)
    load_method_state_dict(fresh, state)
    torch.testing.assert_close(_forward(fresh.eval(), scene_batch), _forward(model.eval(), scene_batch))


def test_unknown_method_lists_available():
    with pytest.raises(PeftbenchError) as err:
        get_method("gemm")
    for name in ("linear", "full", "gem"):
        assert name in str(err.value)
    assert set(PEFT_METHODS) <= set(available_methods())


def test_unknown_setting_names_valid_ones():
    with pytest.raises(PeftbenchError, match="rank"):
        build_method("gem", {"rnak": 4})


@pytest.mark.parametrize("switch, method, settings, half", [
    (0, "ca", None, False), (1, "ca", None, True),
    (1, "adapter", {"placement": "parallel_attn"}, False),  # its linears read the norm's output as it is
    (1, "lora", None, True)])  # no branch beside the attention: as ever
def test_attention_norm_writes_the_autocast_dtype_where_every_branch_reads_half_input(
        micro_config, scene_batch, monkeypatch, switch, method, settings, half):
    """``block.HALF_BRANCH_INPUT``: the norm before the attention writes its output for the attention's linear (the
    autocast dtype, ``linear_input``) where every branch beside the attention declares ``reads_half_input`` (GEM's
    Context Adapter), never beside another branch, and only with the switch on."""
    from peftbench.backbone import block as block_module
    from peftbench.backbone.layer_norm import LayerNorm

    monkeypatch.setattr(block_module, "HALF_BRANCH_INPUT", switch)
    model = _model(micro_config, method, settings)
    norms = {id(b.norm1[0]) for _, b in model.backbone.encoder_blocks()}
    seen, forward = [], LayerNorm.forward

    def recording(self, x, linear_input=False):
        if id(self) in norms:
            seen.append(linear_input)
        return forward(self, x, linear_input)

    monkeypatch.setattr(LayerNorm, "forward", recording)
    _forward(model, scene_batch)
    assert seen == [half] * len(norms)
