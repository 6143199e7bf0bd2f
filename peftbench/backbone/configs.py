"""Named backbone configurations (constructor kwargs of ``PointTransformerV3``)."""

from __future__ import annotations

from typing import Any

from peftbench.errors import PeftbenchError

_SONATA_COMMON: dict[str, Any] = dict(
    in_channels=9,
    order=("z", "z-trans", "hilbert", "hilbert-trans"),
    stride=(2, 2, 2, 2),
    enc_depths=(3, 3, 3, 12, 3),
    enc_channels=(48, 96, 192, 384, 512),
    enc_num_head=(3, 6, 12, 24, 32),
    enc_patch_size=(1024, 1024, 1024, 1024, 1024),
    mlp_ratio=4,
    qkv_bias=True,
    drop_path=0.3,
    shuffle_orders=True,
    enable_flash=True,
    mask_token=False,
)

BACKBONE_CONFIGS: dict[str, dict[str, Any]] = {
    # Sonata encoder as used for linear probing and PEFT (lin / LoRA configs): 108,461,328 params.
    "sonata": dict(_SONATA_COMMON, enc_mode=True),
    # Sonata with the decoder of the dec/ft configs: +16,331,520 params.
    "sonata-dec": dict(_SONATA_COMMON, enc_mode=False, dec_depths=(2, 2, 2, 2), dec_channels=(64, 96, 192, 384),
                       dec_num_head=(4, 6, 12, 24), dec_patch_size=(1024, 1024, 1024, 1024)),
    # A small PTv3 for CPU runs: Sonata's structure (5 stages, 4 orders, head dim 16) at ~1/50 the width.
    "tiny": dict(
        _SONATA_COMMON,
        enc_depths=(1, 1, 1, 2, 1),
        enc_channels=(16, 32, 64, 96, 128),
        enc_num_head=(1, 2, 4, 6, 8),
        enc_patch_size=(128, 128, 128, 128, 128),
        drop_path=0.1,
        enc_mode=True,
    ),
    "tiny-dec": dict(
        _SONATA_COMMON,
        enc_depths=(1, 1, 1, 2, 1),
        enc_channels=(16, 32, 64, 96, 128),
        enc_num_head=(1, 2, 4, 6, 8),
        enc_patch_size=(128, 128, 128, 128, 128),
        dec_depths=(1, 1, 1, 1),
        dec_channels=(16, 32, 64, 96),
        dec_num_head=(1, 2, 4, 6),
        dec_patch_size=(128, 128, 128, 128),
        drop_path=0.1,
        enc_mode=False,
    ),
}


def backbone_config(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of a named config with overrides applied."""
    if name not in BACKBONE_CONFIGS:
        raise PeftbenchError(f"unknown backbone config {name!r}; available: {', '.join(BACKBONE_CONFIGS)}")
    return {**BACKBONE_CONFIGS[name], **overrides}
