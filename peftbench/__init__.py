"""peftbench: a benchmark and ablation harness for PEFT of pretrained 3D point-cloud transformers."""

from peftbench.errors import PeftbenchError

__all__ = ["PeftbenchError"]
__version__ = "0.1.0"

from peftbench.method import Method, MethodConfig  # noqa: E402
from peftbench.registry import register  # noqa: E402

__all__ += ["Method", "MethodConfig", "register"]
