"""Training settings (defaults from Sonata's recipes where they make sense at small scale)."""

from __future__ import annotations

import dataclasses

from peftbench.errors import PeftbenchError


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int | None = None   # None: one pass over the training scenes
    batch_size: int = 2
    lr: float = 0.002                    # head (and method unless method_lr is set)
    method_lr: float | None = None
    backbone_lr: float = 0.0002          # unfrozen backbone weights (full fine-tuning)
    weight_decay: float = 0.02
    pct_start: float = 0.05
    div_factor: float = 10.0
    final_div_factor: float = 1000.0
    grad_clip: float = 3.0
    lovasz_weight: float = 1.0
    amp: bool = True                     # fp16 autocast + GradScaler, on CUDA only
    eval_every: int = 1
    num_workers: int = 0
    mix_prob: float = 0.0                # Mix3D-style merging of scene pairs
    grid_size: float = 0.02
    point_max: int = 102400              # training sphere crop
    augment: bool = True
    test_protocol: str = "single"        # final test: "single" pass, or "voting" (Sonata's 13-aug fragments)
    data_parallel: int = 1               # processes per trial sharing each step (batch_size is their total)

    def __post_init__(self) -> None:
        if self.data_parallel < 1:
            raise PeftbenchError(f"train.data_parallel must be at least 1 (processes per trial), got {self.data_parallel}")
        if self.batch_size % self.data_parallel:
            raise PeftbenchError(f"train.batch_size {self.batch_size} does not split over train.data_parallel "
                                 f"{self.data_parallel} processes; make batch_size a multiple of data_parallel")
        if self.test_protocol not in ("single", "voting"):
            raise PeftbenchError(f"train.test_protocol must be 'single' (one grid-sampled pass) or 'voting' "
                                 f"(Sonata's 13-augmentation fragment voting), got {self.test_protocol!r}")
