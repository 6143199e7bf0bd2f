"""Baseline method plugins (LoRA, adapter, prefix tuning, BitFit): what trains, identity at init,
method-only checkpoints, LoRA merging, and the paper's parameter counts on Sonata."""

from __future__ import annotations

import sys

import pytest
import torch

from peftbench.errors import PeftbenchError
from peftbench.method import count_parameters, load_method_state_dict, method_state_dict
from peftbench.model import Segmentor
from peftbench.params import method_parameters
from peftbench.registry import build_method, get_method
from peftbench.train.losses import segmentation_loss

# (method, settings): every variant whose structure differs
ALL_LINEAR = ["qkv", "proj", "fc1", "fc2"]
VARIANTS = [("lora", {}), ("lora", {"targets": ALL_LINEAR, "use_rslora": True}), ("lora", {"qkv_targets": "q,k,v"}),
            ("lora", {"qkv_targets": "q,v"}),
            ("adapter", {}), ("adapter", {"placement": "parallel_mlp"}), ("adapter", {"placement": "parallel_attn"}),
            ("prompt", {"num_tokens": 5}), ("bitfit", {}), ("bitfit", {"include_norms": True})]
ZERO_INIT = [v for v in VARIANTS if v[0] in ("lora", "adapter")]
IDS = [f"{m}-{'-'.join(map(str, s.values())) or 'default'}" for m, s in VARIANTS]


def _sonata_like(config) -> Segmentor:
    """The 'pretrained' backbone every test model starts from (fixed seed, no method)."""
    torch.manual_seed(0)
    return Segmentor(config, 5)


def _with_method(config, method: str, settings: dict, seed: int = 1):
    model = Segmentor(config, 5)
    model.load_state_dict(_sonata_like(config).state_dict())  # load weights BEFORE attaching
    torch.manual_seed(seed)
    method_obj = build_method(method, settings)
    method_obj.apply(model)
    return model, method_obj


def _forward(model, batch, seed=0):
    inputs = {k: v for k, v in batch.items() if k != "segment"}
    return model(inputs, torch.Generator().manual_seed(seed))


def _perturb_trainable(model, std=0.05):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * std)


@pytest.mark.parametrize("method,settings", VARIANTS, ids=IDS)
def test_only_method_and_head_train(micro_config, scene_batch, method, settings):
    model, method_obj = _with_method(micro_config, method, settings)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("seg_head.") or method_obj.owns(n)}
    assert any(not n.startswith("seg_head.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    segmentation_loss(_forward(model, scene_batch), scene_batch["segment"]).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    assert any(n.startswith("seg_head.") for n in changed)
    # The method's zero-init outputs (lora_B, adapter up) and the prompts get gradients and move.
    moved = {"lora": "lora_B.", "adapter": "up.weight", "prompt": "prompt_k", "bitfit": ".bias"}[method]
    assert any(moved in n and not n.startswith("seg_head.") for n in changed)
    if method == "prompt":
        grads = [p.grad for n, p in model.named_parameters() if "prompt_" in n]  # prompt_k, prompt_v per block
        assert len(grads) == 2 * len(list(model.backbone.encoder_blocks()))
        assert all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("method,settings", ZERO_INIT, ids=[f"{m}-{s}" for m, s in ZERO_INIT])
def test_zero_init_equals_frozen_backbone(micro_config, scene_batch, method, settings):
    base = _sonata_like(micro_config).eval()
    model, _ = _with_method(micro_config, method, settings)
    torch.testing.assert_close(_forward(model.eval(), scene_batch), _forward(base, scene_batch), rtol=0, atol=0)


def test_prompt_prefix_is_attended(micro_config, scene_batch):
    base = _sonata_like(micro_config).eval()
    model, _ = _with_method(micro_config, "prompt", {"num_tokens": 3})
    names = [n for n, _ in model.named_parameters() if "prompt_" in n]
    assert "backbone.enc.enc0.block0.attn.kv_prefix.prompt_k" in names
    block = next(model.backbone.encoder_blocks())[1]
    assert block.attn.kv_prefix.prompt_v.shape == (3, block.attn.num_heads, block.channels // block.attn.num_heads)
    assert not torch.allclose(_forward(model.eval(), scene_batch), _forward(base, scene_batch))


@pytest.mark.parametrize("method,settings", VARIANTS, ids=IDS)
def test_method_state_roundtrip(micro_config, scene_batch, method, settings):
    model, _ = _with_method(micro_config, method, settings)
    _perturb_trainable(model)
    state = method_state_dict(model)
    assert sum(t.numel() for t in state.values()) == count_parameters(model)[0]
    fresh, _ = _with_method(micro_config, method, settings, seed=2)
    expected = _forward(model.eval(), scene_batch)
    assert not torch.allclose(_forward(fresh.eval(), scene_batch), expected)
    load_method_state_dict(fresh, state)
    torch.testing.assert_close(_forward(fresh, scene_batch), expected, rtol=0, atol=0)


@pytest.mark.parametrize("settings", [{}, {"targets": ALL_LINEAR, "use_rslora": True, "r": 4, "alpha": 2},
                                      {"qkv_targets": "q,k,v"}, {"qkv_targets": "q,v", "targets": ALL_LINEAR}])
def test_lora_merge_equals_unmerged_and_restores_sonata_keys(micro_config, scene_batch, settings):
    model, method_obj = _with_method(micro_config, "lora", settings)
    assert "enc.enc0.block0.attn.qkv.base_layer.weight" in model.backbone.state_dict()
    _perturb_trainable(model)
    unmerged = _forward(model.eval(), scene_batch)
    method_obj.merge(model)
    torch.testing.assert_close(_forward(model, scene_batch), unmerged, rtol=1e-5, atol=1e-5)
    keys = set(model.backbone.state_dict())
    assert keys == set(_sonata_like(micro_config).backbone.state_dict())
    assert "enc.enc0.block0.attn.qkv.weight" in keys and not any("lora_" in k or "base_layer" in k for k in keys)
    with pytest.raises(PeftbenchError, match="attach lora first"):
        method_obj.merge(model)


def test_lora_unmatched_target_names_valid_modules(micro_config):
    with pytest.raises(PeftbenchError) as err:
        _with_method(micro_config, "lora", {"targets": ["qkvv"]})
    for name in ("qkvv", "attn.qkv", "attn.proj", "mlp.0.fc1", "mlp.0.fc2"):
        assert name in str(err.value)


def test_lora_qkv_targets_update_only_the_chosen_parts(micro_config, scene_batch):
    model, _ = _with_method(micro_config, "lora", {})  # default q,k: the paper's ΔQ and ΔK
    _perturb_trainable(model)
    layer = model.backbone.enc.enc0.block0.attn.qkv
    d = layer.base_layer.in_features
    delta = layer.delta_weight()
    assert delta[:2 * d].abs().sum() > 0 and torch.equal(delta[2 * d:], torch.zeros_like(delta[2 * d:]))
    x = torch.randn(7, d)
    torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ delta.T)
    model, _ = _with_method(micro_config, "lora", {"qkv_targets": "q,v"})
    _perturb_trainable(model)
    delta = model.backbone.enc.enc0.block0.attn.qkv.delta_weight()
    assert torch.equal(delta[d:2 * d], torch.zeros_like(delta[d:2 * d])) and delta[2 * d:].abs().sum() > 0
    with pytest.raises(PeftbenchError, match="qkv_targets"):
        _with_method(micro_config, "lora", {"qkv_targets": "k,v"})


@pytest.mark.parametrize("parts", [("q", "k"), ("q", "v"), ("q",), None])
def test_lora_linear_equals_its_definition_values_and_gradients(parts):
    """One stacked matmul and one addmm compute ``base(x) + [B_q A_q x, B_k A_k x, 0] * scaling`` (or the
    whole-layer ``B A x``), with every part's gradients, in float64."""
    from methods.lora import QKV, LoRALinear

    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(6, 18).double(), r=2, scaling=0.75, dropout=0.0, parts=parts)
    for param in layer.parameters():
        torch.nn.init.normal_(param)  # lora_B starts at zero: make every part count
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(5, 18, dtype=torch.float64)
    got = layer(x)
    got_grads = torch.autograd.grad(got, [x, *layer.parameters()], dy)
    if parts is None:
        update = layer.lora_B(layer.lora_A(x))
    else:
        updates = {part: layer.lora_B[part](layer.lora_A[part](x)) for part in parts}
        update = torch.cat([updates.get(part, x.new_zeros(5, 6)) for part in QKV], dim=1)
    expected = layer.base_layer(x) + update * 0.75
    expected_grads = torch.autograd.grad(expected, [x, *layer.parameters()], dy)
    torch.testing.assert_close(got, expected)
    for a, b in zip(got_grads, expected_grads):
        torch.testing.assert_close(a, b)


def test_bad_settings_say_how_to_fix(micro_config):
    with pytest.raises(PeftbenchError, match="post_mlp"):
        _with_method(micro_config, "adapter", {"placement": "after_mlp"})
    with pytest.raises(PeftbenchError, match="num_tokens"):
        _with_method(micro_config, "prompt", {"num_tokens": 0})


def test_bitfit_trains_biases_not_norms_by_default(micro_config):
    for include_norms in (False, True):
        model, _ = _with_method(micro_config, "bitfit", {"include_norms": include_norms})
        grad = {n: p.requires_grad for n, p in model.named_parameters()}
        block = "backbone.enc.enc1.block0."
        assert grad[block + "cpe.0.bias"] and grad[block + "attn.qkv.bias"]
        assert grad["backbone.enc.enc1.down.proj.bias"] and grad["backbone.embedding.stem.linear.bias"]
        assert not grad[block + "attn.qkv.weight"] and not grad[block + "cpe.0.weight"]
        assert grad[block + "norm1.0.weight"] == grad[block + "norm1.0.bias"] == include_norms


# Sonata + ScanNet-20 head (24,660): the paper's Table 1 sizes and Table 10's tight budgets
# (gem-paper.md §3-4). Every one is exact arithmetic, so the counts must match exactly.
SONATA_COUNTS = [
    ("lora", {}, 1_855_572), ("adapter", {}, 2_782_788), ("prompt", {}, 5_517_396),
    ("bitfit", {}, 104_564), ("bitfit", {"include_norms": True}, 149_940),
    ("adapter", {"placement": "parallel_mlp"}, 2_782_788),
    ("lora", {"qkv_targets": "q,k,v"}, 1_855_572), ("lora", {"qkv_targets": "q,v"}, 1_855_572),
    ("lora", {"r": 1}, 53_268), ("adapter", {"bottleneck": 1}, 46_140), ("prompt", {"num_tokens": 2}, 53_268),
]


@pytest.mark.parametrize("method,settings,expected", SONATA_COUNTS,
                         ids=[f"{m}-{'-'.join(map(str, s.values())) or 'default'}" for m, s, _ in SONATA_COUNTS])
def test_sonata_parameter_counts(method, settings, expected):
    trainable, total = method_parameters("sonata", 20, method, settings)
    assert trainable == expected
    if not settings:  # Table 1's Pct column (trainable / total, as HF peft prints it)
        pct = {"lora": 1.7, "adapter": 2.5, "prompt": 4.8, "bitfit": 0.1}[method]
        assert round(100 * trainable / total, 1) == pct


def test_params_table_shows_the_papers_percentages_and_says_what_it_does_not_reproduce():
    from peftbench.params import parameter_table

    table = parameter_table("sonata", 20, ["gem", "sa", "ca", "bitfit"])
    no_head = {line.split()[0]: float(line.split()[-1].rstrip("%")) for line in table.splitlines()[2:6]}
    assert {m: round(v, 1) for m, v in no_head.items()} == {"gem": 1.6, "sa": 1.0, "ca": 0.6, "bitfit": 0.1}
    assert "0.2M" in table and "not reproduced" in table


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_adapter_scale_multiplies_its_output_and_one_costs_no_multiply(scale):
    """``scale`` multiplies the bottleneck's output; at the default of 1 no multiply runs (a kernel and an
    autograd node a block on a GPU)."""
    adapter_module = sys.modules[get_method("adapter").__module__]
    torch.manual_seed(0)
    adapter = adapter_module.BottleneckAdapter(8, 4, scale)
    torch.nn.init.normal_(adapter.up.weight)
    x = torch.randn(5, 8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = adapter(None, x)
    torch.testing.assert_close(out, adapter.up(adapter.act(adapter.down(x))) * scale)
    multiplies = [e for e in prof.events() if e.name == "aten::mul"]
    assert len(multiplies) == (0 if scale == 1.0 else 1)


@pytest.mark.parametrize("method,settings,attn_read,mlp_read", [
    (None, {}, False, False), ("gem", {}, True, False), ("adapter", {"placement": "parallel_mlp"}, False, True),
    ("adapter", {"placement": "parallel_attn"}, True, False)])
def test_norms_before_attention_and_mlp_feed_linears_only_where_no_branch_reads_them(
        micro_config, scene_batch, monkeypatch, method, settings, attn_read, mlp_read):
    """``linear_input`` (the norm may write the autocast dtype) is asked for norm1 / norm2 exactly where the
    attention / MLP slot is empty, so a branch (GEM's float32 Context Adapter) never reads a rounded input."""
    from peftbench.backbone import layer_norm
    model = _with_method(micro_config, method, settings)[0] if method else _sonata_like(micro_config)
    names = {id(module): name for name, module in model.named_modules()}
    asked = {}
    forward = layer_norm.LayerNorm.forward

    def spy(self, x, linear_input=False):
        asked[names[id(self)]] = linear_input
        return forward(self, x, linear_input)

    monkeypatch.setattr(layer_norm.LayerNorm, "forward", spy)
    _forward(model, scene_batch)
    blocks = [name for name, _ in model.backbone.named_modules() if name.endswith(".block0")]
    assert blocks
    for block in blocks:
        assert asked[f"backbone.{block}.norm1.0"] is not attn_read
        assert asked[f"backbone.{block}.norm2.0"] is not mlp_read
        assert asked[f"backbone.{block}.cpe.2"] is False  # read by the float32 residual stream
