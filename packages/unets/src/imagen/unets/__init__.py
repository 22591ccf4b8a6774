"""imagen.unets: the efficient 2D Unet, Unet3D for video, NullUnet and the Imagen paper presets.

Every U-Net maps a noisy input and its noise level (plus text, low-resolution and image
conditioning) to a prediction of the same spatial shape; it describes itself with ``.config``,
is rebuilt with :func:`unet_from_config` and changed with ``.recast(**changes)``.
"""

from .config import unet_from_config
from .core import TextConditioning
from .null import NullUnet
from .presets import BaseUnet64, SRUnet256, SRUnet1024
from .unet import Unet
from .unet3d import Unet3D

__all__ = [
    "BaseUnet64", "NullUnet", "SRUnet256", "SRUnet1024", "TextConditioning", "Unet", "Unet3D", "unet_from_config",
]
