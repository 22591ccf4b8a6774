"""A placeholder stage for cascades that train only some of their U-Nets."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import ConfigurableMixin, register_unet

__all__ = ["NullUnet"]

_ATTRIBUTES = {
    "channels": 3, "channels_out": None, "lowres_cond": False, "self_cond": False, "cond_images_channels": 0,
    "text_embed_dim": 768, "cond_on_text": True, "max_text_len": 256, "is_video": False,
}


@register_unet
class NullUnet(ConfigurableMixin, nn.Module):
    """A stage that returns its input unchanged: ``forward(x, *args, **kwargs) -> x``.

    Accepts any arguments; the keywords every stage exposes (``channels``, ``channels_out``,
    ``lowres_cond``, ``self_cond``, ``cond_images_channels``, ``text_embed_dim``,
    ``cond_on_text``, ``max_text_len``, ``is_video``) are kept as attributes, the rest ignored.
    It holds one dummy parameter so that optimizers accept it.
    """

    is_null = True
    downsample_factor = 1

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__()
        values = {k: kwargs.get(k, default) for k, default in _ATTRIBUTES.items()}
        values["channels_out"] = values["channels_out"] or values["channels"]
        self._record_config(values)
        for k, v in values.items():
            setattr(self, k, v)
        self.dummy_parameter = nn.Parameter(torch.zeros(1))

    def cast_model_parameters(self, *args: Any, **kwargs: Any) -> NullUnet:
        """The reference's recast: a null stage stays itself."""
        return self

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Return ``x`` unchanged."""
        return x
