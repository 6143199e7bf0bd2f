"""Full fine-tuning: every backbone parameter and the head train (Sonata ft.)."""

from peftbench import Method, register


@register
class FullFineTuning(Method):
    name = "full"
    trains_backbone = True
