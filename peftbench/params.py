"""``peftbench params``: each method's trainable / total parameters, with no data and no weights."""

from __future__ import annotations

import torch

from peftbench.backbone import backbone_config
from peftbench.method import count_parameters
from peftbench.model import Segmentor
from peftbench.registry import available_methods, build_method


def method_parameters(backbone: str, num_classes: int, method: str, settings: dict | None = None) -> tuple[int, int]:
    with torch.device("meta"):  # shapes only: Sonata-size models cost no memory or init time
        model = Segmentor(backbone_config(backbone), num_classes)
        build_method(method, settings).apply(model)
    return count_parameters(model)


def human(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def parameter_table(backbone: str, num_classes: int, methods: list[str] | None = None) -> str:
    rows = [f"backbone {backbone}, {num_classes} classes",
            f"{'method':<10} {'trainable':>12} {'':>8} {'total':>13} {'trainable%':>11}"]
    for name in methods or available_methods():
        trainable, total = method_parameters(backbone, num_classes, name)
        rows.append(f"{name:<10} {trainable:>12,} {human(trainable):>8} {total:>13,} {100 * trainable / total:>10.2f}%")
    return "\n".join(rows)
