"""What the 2D and 3D U-Nets share: the conditioning (noise levels, text, null text), input checks,
the conditioning-dropout draw and classifier-free guidance in one batched forward.

The text conditioning does not depend on the noise level: :meth:`UnetBase.text_conditioning`
computes it once (a :class:`TextConditioning`) and ``forward(..., text_conditioning=...)`` reuses
it, so a sampling loop pays for the text projection and the perceiver pooling once, not per step.

The conditioning modules sit directly on the U-Net under the reference's names
(``to_time_hiddens``, ``to_time_cond``, ``to_time_tokens``, ``to_lowres_time_*``, ``norm_cond``,
``text_to_cond``, ``attn_pool``, ``null_text_embed``, ``null_text_hidden``,
``to_text_non_attn_cond``), so reference state dicts load unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks as chk
from .config import ConfigurableMixin
from .embeddings import LearnedSinusoidalPosEmb, PerceiverResampler

__all__ = ["TextConditioning", "UnetBase", "draw_keep_mask", "project"]


class TextConditioning(NamedTuple):
    """A U-Net's conditioning on a batch of texts, independent of the noise level.

    tokens: (b, n, cond_dim), the text tokens the attention layers read (null text embedding at
    masked positions and for dropped samples; the perceiver's latents with ``attn_pool_text``);
    hidden: (b, time_cond_dim), the pooled text added to the time conditioning; mask: (b, n) bool,
    True = attend, or None (every token visible).
    """

    tokens: torch.Tensor
    hidden: torch.Tensor
    mask: torch.Tensor | None


def draw_keep_mask(batch: int, device, cond_drop_prob: float, cond_drop_mask: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor:
    """Which samples keep their conditioning, (batch,) bool.

    ``cond_drop_mask`` (b,) bool, True = drop, wins; otherwise each sample is kept with probability
    ``1 - cond_drop_prob`` (the reference's draw: uniform < 1 - p), drawn from ``generator`` on
    its own device; probabilities 0 and 1 draw nothing.
    """
    if cond_drop_mask is not None:
        mask = torch.as_tensor(cond_drop_mask, device=device)
        if mask.shape != (batch,) or mask.dtype != torch.bool:
            raise ValueError(f"cond_drop_mask must be a bool tensor of shape ({batch},), got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        return ~mask
    if isinstance(cond_drop_prob, bool) or not isinstance(cond_drop_prob, (int, float)) or \
            not 0.0 <= cond_drop_prob <= 1.0:
        raise ValueError(f"cond_drop_prob must be a float in [0, 1], got {cond_drop_prob!r}")
    if cond_drop_prob == 0.0:
        return torch.ones(batch, dtype=torch.bool, device=device)
    if cond_drop_prob == 1.0:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    gen_device = generator.device if generator is not None else device
    return (torch.rand(batch, generator=generator, device=gen_device) < 1 - cond_drop_prob).to(device)


def pair_with_null(text: TextConditioning, null: TextConditioning) -> TextConditioning:
    """``text`` (b samples) followed by ``null`` (one sample, repeated b times): guidance's doubled batch."""
    def cat(value, null_value):
        return None if value is None else torch.cat((value, null_value.expand_as(value)))
    return TextConditioning(*map(cat, text, null))


def project(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The components of each sample of ``x`` parallel and orthogonal to the same sample of ``y``.

    x, y: (b, ...) -> two tensors shaped like x, computed in float64.
    """
    dtype = x.dtype
    flat_x, flat_y = x.flatten(1).double(), y.flatten(1).double()
    unit = F.normalize(flat_y, dim=-1)
    parallel = (flat_x * unit).sum(dim=-1, keepdim=True) * unit
    return parallel.view_as(x).to(dtype), (flat_x - parallel).view_as(x).to(dtype)


def _time_embedding(sinu_dim: int, time_cond_dim: int) -> nn.Sequential:
    return nn.Sequential(LearnedSinusoidalPosEmb(sinu_dim), nn.Linear(sinu_dim + 1, time_cond_dim), nn.SiLU())


class UnetBase(ConfigurableMixin, nn.Module):
    """Conditioning, checks and guidance common to :class:`Unet` and :class:`Unet3D` (not used directly)."""

    is_null = False
    is_video = False

    # ----------------------------------------------------------------------------- construction
    def _build_conditioning(self, o: dict[str, Any], *, cond_dim: int, time_cond_dim: int) -> None:
        """The noise-level and text conditioning modules, from the constructor keywords ``o``."""
        sinu, tokens = o["learned_sinu_pos_emb_dim"], o["num_time_tokens"]
        self.cond_dim, self.num_time_tokens = cond_dim, tokens
        self.to_time_hiddens = _time_embedding(sinu, time_cond_dim)
        self.to_time_cond = nn.Sequential(nn.Linear(time_cond_dim, time_cond_dim))
        self.to_time_tokens = nn.Sequential(nn.Linear(time_cond_dim, cond_dim * tokens))
        if o["lowres_cond"]:
            self.to_lowres_time_hiddens = _time_embedding(sinu, time_cond_dim)
            self.to_lowres_time_cond = nn.Sequential(nn.Linear(time_cond_dim, time_cond_dim))
            self.to_lowres_time_tokens = nn.Sequential(nn.Linear(time_cond_dim, cond_dim * tokens))
        self.norm_cond = nn.LayerNorm(cond_dim)
        self.text_to_cond = nn.Linear(o["text_embed_dim"], cond_dim) if o["cond_on_text"] else None
        self.attn_pool = None
        if o["attn_pool_text"]:
            self.attn_pool = PerceiverResampler(dim=cond_dim, depth=2, dim_head=o["attn_dim_head"],
                                                heads=o["attn_heads"], num_latents=o["attn_pool_num_latents"])
        self.null_text_embed = nn.Parameter(torch.randn(1, o["max_text_len"], cond_dim))
        self.null_text_hidden = nn.Parameter(torch.randn(1, time_cond_dim))
        self.to_text_non_attn_cond = None
        if o["cond_on_text"]:
            self.to_text_non_attn_cond = nn.Sequential(
                nn.LayerNorm(cond_dim), nn.Linear(cond_dim, time_cond_dim), nn.SiLU(),
                nn.Linear(time_cond_dim, time_cond_dim),
            )

    # ----------------------------------------------------------------------------- conditioning
    def _time_tokens(self, hiddens: torch.Tensor, to_tokens: nn.Module) -> torch.Tensor:
        """(b, time_cond_dim) -> (b, num_time_tokens, cond_dim)."""
        return to_tokens(hiddens).unflatten(-1, (self.num_time_tokens, self.cond_dim))

    def _condition(self, time: torch.Tensor, lowres_noise_times: torch.Tensor | None,
                   text: TextConditioning | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The conditioning vector t (b, time_cond_dim), tokens c (b, m, cond_dim) and their mask (b, m) or None:
        the noise levels' embeddings joined with the text's."""
        hiddens = self.to_time_hiddens(time)
        tokens = self._time_tokens(hiddens, self.to_time_tokens)
        t = self.to_time_cond(hiddens)
        if self.lowres_cond:
            lowres_hiddens = self.to_lowres_time_hiddens(lowres_noise_times)
            t = t + self.to_lowres_time_cond(lowres_hiddens)
            tokens = torch.cat((tokens, self._time_tokens(lowres_hiddens, self.to_lowres_time_tokens)), dim=1)
        c_mask = None
        if text is not None:
            t = t + text.hidden
            if text.mask is not None:
                c_mask = F.pad(text.mask, (tokens.shape[1], 0), value=True)
            tokens = torch.cat((tokens, text.tokens.to(tokens.dtype)), dim=1)
        return t, self.norm_cond(tokens), c_mask

    def text_conditioning(self, text_embeds: torch.Tensor | None, text_mask: torch.Tensor | None = None, *,
                          cond_drop_prob: float = 0.0, cond_drop_mask: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> TextConditioning | None:
        """The text conditioning of ``forward``'s keywords of the same names, for reuse across calls.

        ``forward(x, time, text_conditioning=unet.text_conditioning(text_embeds, text_mask))``
        equals ``forward(x, time, text_embeds=text_embeds, text_mask=text_mask)``. None for no text
        (``text_embeds`` None, or a U-Net with ``cond_on_text=False``, which ignores text).
        """
        batch = text_embeds.shape[0] if isinstance(text_embeds, torch.Tensor) and text_embeds.ndim else 0
        text_embeds, text_mask = self._check_text(text_embeds, text_mask, batch)
        if text_embeds is None:
            return None
        keep = draw_keep_mask(batch, text_embeds.device, cond_drop_prob, cond_drop_mask, generator)
        return self._text(text_embeds, text_mask, keep)

    def null_text_conditioning(self, like: TextConditioning) -> TextConditioning:
        """The conditioning of a dropped text (classifier-free guidance's null half), batch 1, shaped like ``like``:
        every position holds the null text embedding, the pooled text is ``null_text_hidden``."""
        tokens = self.null_text_embed.to(like.tokens.dtype)
        mask = None if like.mask is None else torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if self.attn_pool is not None:
            tokens = self.attn_pool(tokens)
        return TextConditioning(tokens, self.null_text_hidden.to(like.hidden.dtype), mask)

    def _text(self, text_embeds: torch.Tensor, text_mask: torch.Tensor | None, keep: torch.Tensor) -> TextConditioning:
        """Text positions where ``text_mask`` is False and every position of a sample not in ``keep``
        hold the learned null text embedding (``null_text_embed``); a dropped sample's pooled text
        is ``null_text_hidden``. With ``mask_text_padding`` the masked positions are also hidden
        from every attention (dropped samples see their null tokens)."""
        text_tokens, text_mask, shared = self._fit_text(self.text_to_cond(text_embeds), text_mask, keep)
        visible = None
        if self.mask_text_padding and text_mask is not None:
            visible = text_mask | ~keep[:, None]  # (b, n): dropped samples attend to their null tokens
        if self.attn_pool is not None:
            text_tokens, visible = self.attn_pool(text_tokens, mask=visible, shared=shared), None
        elif shared is not None:
            text_tokens = torch.cat((text_tokens, shared.expand(text_tokens.shape[0], -1, -1)), dim=1)
        if visible is None:
            pooled = text_tokens.mean(dim=-2)
        else:
            weights = visible[..., None].to(text_tokens.dtype)
            pooled = (text_tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-5)
        text_hiddens = self.to_text_non_attn_cond(pooled)
        hidden = torch.where(keep[:, None], text_hiddens, self.null_text_hidden.to(text_hiddens.dtype))
        return TextConditioning(text_tokens, hidden, visible)

    def _forward_text(self, text_embeds, text_mask, text_conditioning: TextConditioning | None, batch: int, device,
                      cond_drop_prob: float, cond_drop_mask, generator) -> TextConditioning | None:
        """``forward``'s text conditioning: the one given, or computed from the embeddings."""
        if text_conditioning is None:
            text_embeds, text_mask = self._check_text(text_embeds, text_mask, batch)
            keep = draw_keep_mask(batch, device, cond_drop_prob, cond_drop_mask, generator)
            return None if text_embeds is None else self._text(text_embeds, text_mask, keep)
        if text_embeds is not None or text_mask is not None or cond_drop_mask is not None or cond_drop_prob:
            raise ValueError("give text_conditioning or text_embeds / text_mask / cond_drop_prob / cond_drop_mask, "
                             "not both: text_conditioning() already applied them")
        if not isinstance(text_conditioning, TextConditioning) or text_conditioning.tokens.shape[0] != batch:
            got = getattr(getattr(text_conditioning, "tokens", None), "shape", type(text_conditioning).__name__)
            raise ValueError(f"text_conditioning must be a TextConditioning of batch {batch} (from "
                             f"unet.text_conditioning), got {got}")
        return text_conditioning if self.cond_on_text else None

    def _fit_text(self, tokens: torch.Tensor, mask: torch.Tensor | None, keep: torch.Tensor):
        """Text tokens (b, L, cond_dim) fitted to ``max_text_len`` positions as the reference does
        (truncated, padded), with the null text embedding where the mask is False and in every
        position of a sample not in ``keep``: (tokens, mask (b, max_text_len) or None, shared).

        With a mask the padding holds the null embedding in every sample: it is returned once as
        ``shared`` (1, max_text_len - L, cond_dim) (None without padding), after ``tokens`` (b, L).
        Without a mask the reference pads with zeros, null only for dropped samples: tokens come padded.
        """
        n = self.max_text_len
        tokens, null = tokens[:, :n], self.null_text_embed.to(tokens.dtype)
        length = tokens.shape[1]
        remainder = n - length
        if mask is None:
            tokens = F.pad(tokens, (0, 0, 0, remainder))
            return torch.where(keep[:, None, None], tokens, null), None, None
        mask = mask[:, :n].bool()
        tokens = torch.where(keep[:, None, None] & mask[..., None], tokens, null[:, :length])
        shared = null[:, length:] if remainder else None
        return tokens, F.pad(mask, (0, remainder), value=False), shared

    # ----------------------------------------------------------------------------- guidance
    def forward_with_cond_scale(self, x: torch.Tensor, time, *args, cond_scale: float = 1.0,
                                remove_parallel_component: bool = True, keep_parallel_frac: float = 0.0,
                                **kwargs) -> torch.Tensor:
        """Classifier-free guidance in ONE forward of the doubled batch (conditional half, then null half).

        ``logits + update * (cond_scale - 1)`` with ``update = cond - null``; with
        ``remove_parallel_component`` (the reference's default) the part of ``update`` parallel to
        ``logits`` is kept only at ``keep_parallel_frac``. Takes ``forward``'s arguments; the null
        half drops the text (its conditioning computed once, for one sample).
        """
        if cond_scale == 1:
            return self.forward(x, time, *args, **kwargs)
        b = x.shape[0]
        time = torch.as_tensor(time, device=x.device)
        time = time.expand(b) if time.ndim == 0 else time
        text = kwargs.pop("text_conditioning", None)
        if text is None:
            text = self.text_conditioning(*(kwargs.pop(k, None) for k in ("text_embeds", "text_mask")),
                                          **{k: kwargs.pop(k) for k in ("cond_drop_prob", "cond_drop_mask", "generator")
                                             if k in kwargs})
        if text is not None:
            text = pair_with_null(text, self.null_text_conditioning(text))

        def doubled(value):
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == b:
                return torch.cat((value, value))
            return value

        out = self.forward(doubled(x), doubled(time), *map(doubled, args), text_conditioning=text,
                           **{k: doubled(v) for k, v in kwargs.items()})
        logits, null_logits = out[:b], out[b:]
        update = logits - null_logits
        if remove_parallel_component:
            parallel, orthogonal = project(update, logits)
            update = orthogonal + parallel * keep_parallel_frac
        return logits + update * (cond_scale - 1)

    def cast_model_parameters(self, *, lowres_cond, text_embed_dim, channels, channels_out, cond_on_text):
        """The reference's name for :meth:`recast` with the settings a cascade imposes."""
        return self.recast(lowres_cond=lowres_cond, text_embed_dim=text_embed_dim, channels=channels,
                           channels_out=channels_out, cond_on_text=cond_on_text)

    # ----------------------------------------------------------------------------- input checks
    def _check_time(self, name: str, time, batch: int, device) -> torch.Tensor:
        if time is None:
            raise ValueError(f"{name} is required (a float tensor of shape ({batch},))")
        time = torch.as_tensor(time, device=device)
        if time.ndim == 0:
            time = time.expand(batch)
        if time.shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(time.shape)}")
        return time.float() if not time.is_floating_point() else time

    def _check_text(self, text_embeds, text_mask, batch: int):
        if text_embeds is None or not self.cond_on_text:  # the reference ignores text on unconditional unets
            return None, None
        chk.check_tensor("text_embeds", text_embeds, 3, "(batch, tokens, text_embed_dim)")
        if text_embeds.shape[0] != batch or text_embeds.shape[-1] != self.text_embed_dim:
            raise ValueError(f"text_embeds must be ({batch}, tokens, {self.text_embed_dim}) (text_embed_dim="
                             f"{self.text_embed_dim}), got {tuple(text_embeds.shape)}")
        if text_mask is not None and tuple(text_mask.shape) != tuple(text_embeds.shape[:2]):
            raise ValueError(f"text_mask must have shape {tuple(text_embeds.shape[:2])}, got {tuple(text_mask.shape)}")
        return text_embeds, text_mask

    def _check_spatial(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} (input shape {tuple(x.shape)}) must be divisible by {f}, the "
                             "unet's total downsampling (2 ** stages, one fewer unless memory_efficient)")


def _same_shape(name: str, value: torch.Tensor, x: torch.Tensor) -> None:
    if tuple(value.shape) != tuple(x.shape):
        raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(value.shape)}")


def _resize_to(images: torch.Tensor, size, mode: str) -> torch.Tensor:
    """Resize (b, c, h, w) or (b, c, f, h, w) spatially to ``size``."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if images.ndim == 5:
        b = images.shape[0]
        folded = images.transpose(1, 2).flatten(0, 1)  # (b f) c h w
        out = F.interpolate(folded, size=tuple(size), mode=mode)
        return out.unflatten(0, (b, -1)).transpose(1, 2)
    return F.interpolate(images, size=tuple(size), mode=mode)


def pixel_coordinates(x: torch.Tensor) -> torch.Tensor:
    """(b, 2, h, w): each pixel's x (channel 0) and y (channel 1) in [-1, 1], in x's dtype and device."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    grid = torch.stack((xs.expand(h, w), ys[:, None].expand(h, w)))
    return grid.expand(b, 2, h, w)
