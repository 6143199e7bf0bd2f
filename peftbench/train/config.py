"""Training settings (defaults from Sonata's recipes where they make sense at small scale).

Every choice the GEM paper leaves open is a named setting here; README "The paper's protocol"
lists each with its default and source.
"""

from __future__ import annotations

import dataclasses

from peftbench.errors import PeftbenchError
from peftbench.train.config_ranges import check_ranges

# setting -> (allowed values, what each means): one place for the choices and their messages.
CHOICES: dict[str, tuple[tuple[str, ...], str]] = {
    "test_protocol": (("single", "voting"), "'single' (one grid-sampled pass) or 'voting' "
                                            "(Sonata's 13-augmentation fragment voting)"),
    "amp_dtype": (("float16", "bfloat16"), "'float16' (with a GradScaler) or 'bfloat16' (no scaler)"),
    "lr_groups": (("pointcept", "role"), "'pointcept' (names containing \"block\" at backbone_lr, the rest at "
                                         "lr, as Sonata's param_dicts) or 'role' (head / method / backbone)"),
    "test_checkpoint": (("best", "last"), "'best' (the trainable weights of the best validation mIoU, as "
                                          "Pointcept's tester) or 'last' (the final epoch's)"),
}


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int | None = None   # optimizer steps; None: one pass over the training scenes
    batch_size: int = 2                  # scenes per optimizer step (the total batch)
    accumulate: int = 1                  # micro-batches per step: batch_size / accumulate scenes each
    micro_batches_per_pass: int = 1      # run together in one forward/backward, each with its own loss
    lr: float = 0.002                    # head (and method unless method_lr is set); pointcept: non-"block"
    method_lr: float | None = None       # lr_groups: role only
    backbone_lr: float = 0.0002          # role: unfrozen backbone weights; pointcept: names with "block"
    lr_groups: str = "pointcept"
    weight_decay: float = 0.02
    pct_start: float = 0.05
    div_factor: float = 10.0
    final_div_factor: float = 1000.0
    grad_clip: float = 3.0
    lovasz_weight: float = 1.0
    amp: bool = True                     # autocast on CUDA only
    amp_dtype: str = "float16"           # Sonata's; bfloat16 once measured as accurate and not slower
    eval_every: int = 1
    val_batch_size: int = 1              # validation scenes per forward (Pointcept: 1)
    num_workers: int = 0
    mix_prob: float = 0.0                # Mix3D-style merging of scene pairs, within each micro-batch
    grid_size: float = 0.02
    point_max: int = 102400              # training sphere crop
    augment: bool = True
    test_protocol: str = "single"        # final test: "single" pass, or "voting" (Sonata's 13-aug fragments)
    test_checkpoint: str = "best"        # which weights the final test uses
    test_fragments_per_pass: int = 1     # voting: fragments run together in one forward (Pointcept: 1)
    data_parallel: int = 1               # processes per trial sharing each step (batch_size is their total)
    compile: bool = False                # torch.compile the blocks; measured slower on an H200 (reports/bench/notes.md)

    def __post_init__(self) -> None:
        check_ranges(self)
        for name, (allowed, meaning) in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise PeftbenchError(f"train.{name} must be {meaning}, got {getattr(self, name)!r}")
        if not isinstance(self.accumulate, int) or self.accumulate < 1 or self.batch_size % self.accumulate:
            raise PeftbenchError(f"train.accumulate ({self.accumulate!r}) must be a whole number >= 1 that divides "
                                 f"train.batch_size ({self.batch_size}, the total batch per optimizer step)")
        if self.accumulate % self.micro_batches_per_pass:
            raise PeftbenchError(f"train.micro_batches_per_pass ({self.micro_batches_per_pass}) must divide "
                                 f"train.accumulate ({self.accumulate}): each pass carries that many micro-batches")
        if self.method_lr is not None and self.lr_groups != "role":
            raise PeftbenchError("train.method_lr needs train.lr_groups: role (pointcept groups by the name "
                                 "keyword \"block\" only); drop method_lr or set lr_groups: role")
        if self.data_parallel < 1:
            raise PeftbenchError(f"train.data_parallel must be at least 1 (processes per trial), "
                                 f"got {self.data_parallel}")
        if self.micro_batch % self.data_parallel:
            raise PeftbenchError(f"train.batch_size {self.batch_size} / train.accumulate {self.accumulate} = "
                                 f"{self.micro_batch} scenes per micro-batch do not split over train.data_parallel "
                                 f"{self.data_parallel} processes; make it a multiple of data_parallel (24 = 8 x 3)")

    @property
    def micro_batch(self) -> int:
        """Scenes per forward pass (per micro-batch)."""
        return self.batch_size // self.accumulate
