"""``peftbench params``: each method's trainable / total parameters, with no data and no weights."""

from __future__ import annotations

import torch

from peftbench.backbone import backbone_config
from peftbench.method import count_parameters
from peftbench.model import Segmentor
from peftbench.registry import available_methods, build_method

# Where the paper's Table 1 and our counts part ways, said under the table (gem-paper.md §3-4).
NOTES = {
    "bitfit": "bitfit: the paper's 0.2M / 0.2 % is not reproduced: the encoder's biases give 0.10M, "
              "with LayerNorms (include_norms: true) 0.15M",
}
PCT_NOTE = ("no-head% leaves out the linear head (seg_head): Table 1's Pct column matches it for every PEFT row "
            "(GEM 1.6, SA 1.0, CA 0.6, LoRA 1.7, Adapter 2.5, Prompt 4.8), while its parameter counts include "
            "the head (LoRA's 1.9M needs it)")


def method_parameters(backbone: str, num_classes: int, method: str, settings: dict | None = None) -> tuple[int, int]:
    trainable, total, _ = _counts(backbone, num_classes, method, settings)
    return trainable, total


def _counts(backbone: str, num_classes: int, method: str, settings: dict | None) -> tuple[int, int, int]:
    """(trainable, total, trainable parameters of the linear head)."""
    with torch.device("meta"):  # shapes only: Sonata-size models cost no memory or init time
        model = Segmentor(backbone_config(backbone), num_classes)
        build_method(method, settings).apply(model)
    trainable, total = count_parameters(model)
    head = sum(p.numel() for p in model.seg_head.parameters() if p.requires_grad)
    return trainable, total, head


def human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def parameter_table(backbone: str, num_classes: int, methods: list[str] | None = None) -> str:
    names = methods or available_methods()
    rows = [f"backbone {backbone}, {num_classes} classes",
            f"{'method':<10} {'trainable':>12} {'':>8} {'total':>13} {'trainable%':>11} {'no-head%':>9}"]
    for name in names:
        trainable, total, head = _counts(backbone, num_classes, name, None)
        rows.append(f"{name:<10} {trainable:>12,} {human(trainable):>8} {total:>13,} {100 * trainable / total:>10.3f}%"
                    f" {100 * (trainable - head) / total:>8.3f}%")
    rows += ["", PCT_NOTE] + [note for name, note in NOTES.items() if name in names]
    return "\n".join(rows)
