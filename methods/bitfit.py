"""BitFit (Ben Zaken et al. 2022): train the encoder's bias terms (and optionally its LayerNorms)
plus the head; no new modules.

"Biases" are those of the linear and sparse-conv layers of the input embedding and the encoder
(blocks and pooling); LayerNorm affine parameters (weight and bias) train only with
``include_norms=True``. On Sonata with the ScanNet-20 head that is 104,564 trainable (149,940
with norms). The paper prints 0.2M for BitFit, which neither variant reproduces exactly
(``gem-paper.md`` §4), so both are offered.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from peftbench import Method, MethodConfig, register
from peftbench.errors import PeftbenchError

TUNED_PARTS = ("backbone.embedding.", "backbone.enc.")  # not the decoder, as in GEM's no-decoder tables


@dataclasses.dataclass
class BitFitConfig(MethodConfig):
    include_norms: bool = False   # also train LayerNorm weights and biases


@register
class BitFit(Method):
    """BitFit: the encoder's linear/conv biases (optionally LayerNorms) and the head train."""

    name = "bitfit"
    prefix = ""                   # trains existing backbone parameters, adds none
    config_class = BitFitConfig

    def __init__(self, config: BitFitConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self._norm_params: set[str] | None = None

    def attach(self, model: nn.Module) -> None:
        # LayerNorms are told apart by module type, not by name (cpe.2, norm1.0, down.norm.0, ...).
        self._norm_params = {f"{module_name}.{param_name}"
                             for module_name, module in model.named_modules() if isinstance(module, nn.LayerNorm)
                             for param_name, _ in module.named_parameters(recurse=False)}

    def owns(self, name: str) -> bool:
        """The backbone parameters BitFit tunes count as its own, so the optimizer gives them the
        method learning rate (as every other PEFT method's parameters), not the backbone rate."""
        if self._norm_params is None:
            raise PeftbenchError("bitfit: attach(model) before asking which parameters train (apply does both)")
        if not name.startswith(TUNED_PARTS):
            return False
        if name in self._norm_params:
            return self.config.include_norms
        return name.endswith(".bias")
