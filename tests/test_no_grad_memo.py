"""Derived weights kept while autograd is off (``no_grad_memo``): reused call after call, rebuilt when a source
is written or replaced, never kept in training; GEM's evaluation equals its training path after a weight update."""

from __future__ import annotations

import torch
from torch import nn

from peftbench.backbone.no_grad_memo import no_grad_memo
from peftbench.model import Segmentor
from peftbench.registry import build_method


def _counted(layer: nn.Linear):
    """``[weight | bias] * 2`` of ``layer`` through the memo, and a list that grows on every build."""
    made = []

    def make() -> torch.Tensor:
        made.append(1)
        return torch.cat([layer.weight, layer.bias.unsqueeze(1)], dim=1) * 2

    return made, lambda: no_grad_memo(layer, "doubled", (layer.weight, layer.bias), make)


def test_reused_without_grad_and_rebuilt_when_a_source_changes():
    layer = nn.Linear(3, 2)
    made, derived = _counted(layer)
    with torch.no_grad():
        first = derived()
        assert derived() is first and len(made) == 1
        layer.weight.add_(1.0)  # an optimizer step writes in place
        second = derived()
        assert len(made) == 2 and torch.equal(second[:, :3], first[:, :3] + 2)
        layer.bias.data = torch.full((2,), 5.0)  # replaced, not written: a new tensor
        third = derived()
        assert len(made) == 3 and torch.equal(third[:, 3], torch.full((2,), 10.0))
    with torch.inference_mode():
        assert derived() is third


def test_replaced_by_a_conversion_and_back():
    layer = nn.Linear(3, 2)
    made, derived = _counted(layer)
    with torch.no_grad():
        derived()
        layer.double()
        layer.float()  # the same values and dtype again, in a new tensor
        derived()
    assert len(made) == 2


def test_built_in_the_graph_with_grad_on():
    layer = nn.Linear(3, 2)
    made, derived = _counted(layer)
    first, second = derived(), derived()
    assert len(made) == 2 and first.requires_grad and first is not second
    assert "_no_grad_memo" not in layer.__dict__


def test_gem_evaluation_follows_its_weights(micro_config, scene_batch):
    torch.manual_seed(0)
    model = Segmentor(micro_config, 5).eval()
    build_method("gem").apply(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad and "gem_" in n}
    for name, p in trainable.items():
        if name.endswith("up.weight"):
            nn.init.normal_(p, std=0.05)  # non-zero read-outs: both adapters reach the logits
    inputs = {k: v for k, v in scene_batch.items() if k != "segment"}
    run = lambda: model(inputs, torch.Generator().manual_seed(0))  # noqa: E731 - the same serialization orders
    with torch.no_grad():
        before = run()
        assert torch.equal(run(), before)
        for name, p in trainable.items():  # what an optimizer step does
            if name.endswith(("conv.weight", "down.weight", "k.weight", "v.weight")):
                p.add_(torch.randn_like(p) * 0.05)
        after = run()
    reference = run().detach()  # autograd on: nothing memoised
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, reference, rtol=0, atol=0)
    assert any("_no_grad_memo" in m.__dict__ for m in model.modules())

    optimizer = torch.optim.AdamW(trainable.values(), lr=0.05, fused=True)  # the trainer's on CUDA
    run().square().sum().backward()
    optimizer.step()
    with torch.no_grad():
        stepped = run()
    assert not torch.allclose(stepped, after)
    torch.testing.assert_close(stepped, run().detach(), rtol=0, atol=0)


def test_rebuilt_after_an_optimizer_step():
    """The trainer's AdamW (fused on CUDA, foreach elsewhere) writes the parameters in place: the memo sees it."""
    for options in ({"fused": True}, {"foreach": True}, {"foreach": False}):
        layer = nn.Linear(3, 2)
        made, derived = _counted(layer)
        optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, **options)
        with torch.no_grad():
            before = derived().clone()
        layer(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        with torch.no_grad():
            after = derived()
        assert len(made) == 2 and not torch.equal(after, before), options
        torch.testing.assert_close(after, torch.cat([layer.weight, layer.bias.unsqueeze(1)], dim=1) * 2)
