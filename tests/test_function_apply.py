"""``function_apply.apply``: the Function's node where autograd records, its forward alone where it does not; a frozen
model's evaluation takes the second for every Function of ours."""

from __future__ import annotations

import torch

from peftbench.backbone import function_apply
from peftbench.model import Segmentor


class _Doubled(torch.autograd.Function):
    applied: list[int] = []

    @classmethod
    def apply(cls, *args):  # type: ignore[override]
        cls.applied.append(1)
        return super().apply(*args)

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        ctx.save_for_backward(x)
        return x * factor

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.factor, None


def test_forward_alone_without_autograd_and_the_node_with_it():
    _Doubled.applied.clear()
    x = torch.arange(3.0, requires_grad=True)
    with torch.no_grad():
        y = function_apply.apply(_Doubled, x, 2.0)
    assert torch.equal(y, torch.tensor([0.0, 2.0, 4.0])) and y.grad_fn is None and not _Doubled.applied
    y = function_apply.apply(_Doubled, x, 3.0)
    y.sum().backward()
    assert _Doubled.applied == [1] and torch.equal(x.grad, torch.full((3,), 3.0))


def test_evaluation_applies_no_function(micro_config, scene_batch, monkeypatch):
    model = Segmentor(micro_config, 5).eval()
    inputs = {k: v for k, v in scene_batch.items() if k != "segment"}
    run = lambda: model(inputs, torch.Generator().manual_seed(0))  # noqa: E731
    applied = []
    monkeypatch.setattr(torch.autograd.Function, "apply", classmethod(lambda cls, *a: applied.append(cls) or None))
    with torch.no_grad():
        out = run()
    assert not applied and torch.isfinite(out).all()
    monkeypatch.undo()
    assert torch.equal(out, run().detach())  # with autograd on, through the nodes: the same numbers
