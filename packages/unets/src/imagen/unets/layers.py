"""Small layers every U-Net block is built from: the reference's norms, a 'same' convolution, ``Parallel``.

Every layer here is dimension-generic over the trailing spatial axes: feature maps are
``(b, c, *spatial)`` with ``spatial = (h, w)`` for images and ``(f, h, w)`` for videos; the
norms' gains carry one singleton per spatial axis (``spatial_dims``), so their state-dict
shapes follow the reference (``(c, 1, 1)`` for images, ``(c, 1, 1, 1)`` for videos).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BLOCK_NORMS",
    "ChanGroupNorm",
    "ChanLayerNorm",
    "ChanRMSNorm",
    "ConvFactory",
    "LayerNorm",
    "Parallel",
    "block_norm",
    "conv2d",
]

ConvFactory = Callable[..., nn.Module]
"""``conv(dim_in, dim_out, kernel_size, *, stride=1, padding=kernel_size // 2, **kwargs) -> module``.

The default padding keeps the size at stride 1; the module's ``forward(x, **conv_kwargs)`` may take
extra keywords (the video space-time convolution takes ``ignore_time``).
"""


def conv2d(dim_in: int, dim_out: int, kernel_size: int, **kwargs) -> nn.Conv2d:
    """A 2D convolution that keeps the size (padding ``kernel_size // 2`` unless ``padding`` is given)."""
    kwargs.setdefault("padding", kernel_size // 2)
    return nn.Conv2d(dim_in, dim_out, kernel_size, **kwargs)


class LayerNorm(nn.Module):
    """Layer norm over axis ``dim`` with a gain and no bias (the reference's ``LayerNorm``).

    ``(x - mean) / sqrt(var + eps) * g`` with the biased variance, ``eps`` 1e-5 in float32 and 1e-3
    in lower precision; ``stable`` first divides by the (detached) maximum along ``dim``.
    ``g`` has shape ``(feats,)`` for ``dim=-1`` and ``(feats, 1, ..., 1)`` (``-dim - 1`` ones) otherwise.
    """

    def __init__(self, feats: int, *, stable: bool = False, dim: int = -1):
        super().__init__()
        self.stable, self.dim = stable, dim
        self.g = nn.Parameter(torch.ones(feats, *((1,) * (-dim - 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., feats, [spatial]) with ``feats`` at axis ``dim`` -> same shape."""
        dtype = x.dtype
        if self.stable:
            x = x / x.amax(dim=self.dim, keepdim=True).detach()
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        if self.dim == -1:  # the fused kernel: same equation, one pass
            return F.layer_norm(x, x.shape[-1:], self.g.to(x.dtype), None, eps).to(dtype)
        # Reducing over the channels of (b, c, *spatial) with var_mean is several times slower on CPU
        # than these separate passes (each a vectorised reduction over an outer axis).
        centred = x - x.mean(dim=self.dim, keepdim=True)
        var = centred.square().mean(dim=self.dim, keepdim=True)
        return centred * ((var + eps).rsqrt().to(dtype) * self.g.to(dtype))


class ChanLayerNorm(LayerNorm):
    """:class:`LayerNorm` over the channels of ``(b, c, *spatial)`` (``spatial_dims`` trailing axes)."""

    def __init__(self, feats: int, *, stable: bool = False, spatial_dims: int = 2):
        super().__init__(feats, stable=stable, dim=-(spatial_dims + 1))


class ChanRMSNorm(nn.Module):
    """RMS norm over the channels: ``normalize(x, dim=1) * sqrt(c) * gamma``; gamma ``(c, 1, ..., 1)``.

    Computed as ``x * rsqrt(max(sum(x^2), 1e-24)) * (sqrt(c) * gamma)`` (``F.normalize``'s 1e-12 floor
    on the norm): one reduction and two full-size products instead of a norm, a division and two products.
    """

    def __init__(self, dim: int, *, spatial_dims: int = 2):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1,) * spatial_dims)))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None, *, silu: bool = False) -> torch.Tensor:
        """x: (b, c, *spatial) -> same shape; ``scale``, ``shift`` (b, c, 1, ...): ``norm(x) * scale + shift``
        in the same two full-size passes (the resnet blocks' time conditioning); ``silu``: then SiLU,
        without keeping its input for the backward (recomputed there from ``x``)."""
        gain = self.gamma * self.scale if scale is None else self.gamma * self.scale * scale
        return _rms_film(x, gain.expand(x.shape[0], *gain.shape[-x.ndim + 1:]), shift, silu)


class ChanGroupNorm(nn.Module):
    """Group norm over channels AND pixels (8 groups, or 1 when the channels do not divide by 8),
    times gamma ``(c, 1, ..., 1)``: not the reference's, an option (``Unet(block_norm="group")``).
    Unlike :class:`ChanRMSNorm`, which normalises each pixel over its channels, it keeps how
    pixels differ from each other, e.g. the zero padding's trace at the borders, from which a
    convolutional U-Net without positional embeddings learns absolute position (bench/cli_demo_tune.md).
    Same parameter (``gamma``) as ChanRMSNorm."""

    def __init__(self, dim: int, *, spatial_dims: int = 2, groups: int = 8):
        super().__init__()
        self.groups = groups if dim % groups == 0 else 1
        self.gamma = nn.Parameter(torch.ones(dim, *((1,) * spatial_dims)))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None,
                shift: torch.Tensor | None = None, *, silu: bool = False) -> torch.Tensor:
        """x: (b, c, *spatial) -> same shape, ``* scale + shift`` when given, then SiLU if ``silu`` (as ChanRMSNorm)."""
        y = F.group_norm(x, self.groups) * (self.gamma if scale is None else self.gamma * scale)
        y = y if shift is None else y + shift
        return F.silu(y) if silu else y


BLOCK_NORMS = {"rms": ChanRMSNorm, "group": ChanGroupNorm}
"""The resnet blocks' norms by ``block_norm`` name; "rms" is the reference's."""


def block_norm(name: str) -> type[nn.Module]:
    """The norm class of ``block_norm`` ``name``; a ValueError naming the accepted ones otherwise."""
    if name not in BLOCK_NORMS:
        raise ValueError(f"block_norm must be one of {sorted(BLOCK_NORMS)}, got {name!r}")
    return BLOCK_NORMS[name]


def _inv_norm(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``rsqrt(max(sum(x^2, dim), 1e-24))`` (keepdim): ``F.normalize``'s 1e-12 floor on the norm."""
    return x.square().sum(dim=dim, keepdim=True).clamp_min(1e-24).rsqrt()


def _unit_backward(g: torch.Tensor, unit: torch.Tensor, inv: torch.Tensor, dim: int) -> torch.Tensor:
    """The gradient through ``unit = x * inv`` given ``g`` = d/d(unit): ``inv (g - unit <g, unit>)`` along
    ``dim`` (the zero slope where the norm floor acts is ignored)."""
    return torch.addcmul(g, unit, (g * unit).sum(dim=dim, keepdim=True), value=-1) * inv


class _RMSFiLM(torch.autograd.Function):
    """``x * rsqrt(max(sum_c x^2, 1e-24)) * gain [+ shift]``, then SiLU if ``silu``, saving only ``x``, the
    per-pixel rsqrt, ``gain`` and ``shift``.

    x: (b, c, *spatial); gain: (b, c, 1, ...); shift: (b, c, 1, ...) or None. Autograd through the plain
    expression would also keep the normalised map and the SiLU's input (two more full-size tensors per
    block); the backward recomputes the SiLU's input from ``x`` instead.
    """

    @staticmethod
    def forward(ctx, x, gain, shift, silu):
        inv = _inv_norm(x, 1)
        ctx.save_for_backward(x, inv, gain, shift)
        ctx.silu = silu
        return _film(x * inv, gain, shift, silu)

    @staticmethod
    def backward(ctx, grad):
        x, inv, gain, shift = ctx.saved_tensors
        unit = x * inv
        if ctx.silu:  # through the SiLU (ATen's own backward kernel, one pass) at its recomputed input
            grad = torch.ops.aten.silu_backward(grad, _film(unit, gain, shift, False))
        spatial = tuple(range(2, x.ndim))
        grad_gain = (grad * unit).sum(dim=spatial, keepdim=True) if ctx.needs_input_grad[1] else None
        grad_shift = grad.sum(dim=spatial, keepdim=True) if shift is not None and ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _unit_backward(grad * gain, unit, inv, 1)
        return grad_x, grad_gain, grad_shift, None


def _film(unit: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor | None, silu: bool) -> torch.Tensor:
    y = unit * gain if shift is None else torch.addcmul(shift, unit, gain)
    return F.silu(y) if silu else y


def _rms_film(x: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor | None, silu: bool = False) -> torch.Tensor:
    if torch.is_grad_enabled() and (x.requires_grad or gain.requires_grad):
        return _RMSFiLM.apply(x, gain, shift, silu)
    return _film(x * _inv_norm(x, 1), gain, shift, silu)


class Parallel(nn.Module):
    """The sum of several modules applied to the same input (children ``fns.0``, ``fns.1``, ...)."""

    def __init__(self, *fns: nn.Module):
        super().__init__()
        self.fns = nn.ModuleList(fns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fns[0](x)
        for fn in self.fns[1:]:
            out = out + fn(x)
        return out
