"""Stand-in for torchvision: only ``torchvision.transforms``, as imagen-pytorch 2.1.0 uses it."""

from . import transforms

__all__ = ["transforms"]
