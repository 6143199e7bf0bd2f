"""The README's "Adding a method" example works as written: loaded from a folder, trained a step."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from peftbench.method import count_parameters
from peftbench.model import Segmentor
from peftbench.registry import build_method, discover
from peftbench.train.losses import segmentation_loss

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_example_method(tmp_path, micro_config, scene_batch):
    section = README.read_text().split("## Adding a method", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 60
    (tmp_path / "adaptformer.py").write_text(code)
    discover([tmp_path])

    model = Segmentor(micro_config, 5)
    build_method("adaptformer", {"bottleneck": 4}).apply(model)
    trainable, total = count_parameters(model)
    adapter = [n for n, p in model.named_parameters() if p.requires_grad and "adaptformer_" in n]
    assert adapter and trainable == sum(p.numel() for n, p in model.named_parameters()
                                        if "adaptformer_" in n or n.startswith("seg_head."))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = {k: v for k, v in scene_batch.items() if k != "segment"}
    segmentation_loss(model(inputs), scene_batch["segment"]).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any("adaptformer_mlp.up" in n for n in changed)
    assert all("adaptformer_" in n or n.startswith("seg_head.") for n in changed)
