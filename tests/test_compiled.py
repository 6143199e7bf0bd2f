"""``train.compile``: compiled blocks compute what eager blocks do, for any point count, one compile."""

from __future__ import annotations

import copy

import torch

from peftbench.backbone.compiled import compile_blocks
from peftbench.backbone.ptv3 import PointTransformerV3
from peftbench.backbone.structure import Point
from peftbench.registry import build_method


class _Wrapper(torch.nn.Module):  # methods attach to ``model.backbone``
    def __init__(self) -> None:
        super().__init__()
        self.backbone = PointTransformerV3(
            in_channels=3, order=("z", "hilbert"), stride=(2,), enc_depths=(1, 2), enc_channels=(8, 16),
            enc_num_head=(1, 2), enc_patch_size=(16, 16), drop_path=0.0, enc_mode=True)


def _scenes(counts: list[int], seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    grids = [torch.randperm(12**3, generator=g)[:n] for n in counts]  # unique cells per scene
    grid = torch.cat([torch.stack([c // 144, c // 12 % 12, c % 12], 1) for c in grids]).int()
    return {"grid_coord": grid, "coord": grid.float() * 0.02, "feat": torch.randn(len(grid), 3, generator=g),
            "offset": torch.tensor(counts).cumsum(0)}


def test_compiled_blocks_match_eager_for_new_point_counts_without_recompiling() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = _Wrapper()
    build_method("gem", {"rank": 4, "num_latents": 2}).apply(eager)
    for p in eager.parameters():  # zero-init up-projections would hide a branch that is traced wrong
        torch.nn.init.normal_(p, std=0.2) if p.requires_grad else None
    compiled = copy.deepcopy(eager)
    keys = list(compiled.state_dict())
    assert compile_blocks(compiled, backend="aot_eager") == 3
    assert list(compiled.state_dict()) == keys
    graphs = []
    for counts, seed in (([70, 40], 1), ([55, 90], 2)):  # a new point count and a short patch each time
        outs = []
        for model in (eager, compiled):
            data = _scenes(counts, seed)
            data["feat"].requires_grad_(True)
            feat = model.backbone(Point(data), generator=torch.Generator().manual_seed(5)).feat
            (feat * torch.linspace(-1, 1, feat.numel()).view_as(feat)).sum().backward()
            outs.append((feat.detach(), data["feat"].grad,
                         [p.grad.clone() for p in model.parameters() if p.requires_grad]))
            model.zero_grad()
        (f0, g0, w0), (f1, g1, w1) = outs
        torch.testing.assert_close(f1, f0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-6)
        for a, b in zip(w1, w0):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        graphs.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[1] == graphs[0], f"recompiled for a new point count: {graphs}"
