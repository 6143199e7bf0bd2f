"""Linear probing: the frozen backbone's hypercolumn into a trained linear head (Sonata lin.)."""

from peftbench import Method, register


@register
class LinearProbe(Method):
    name = "linear"
