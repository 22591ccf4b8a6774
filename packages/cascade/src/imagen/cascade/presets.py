"""Named recipes: a cascade config together with the training and sampling settings it was tuned with.

``small_fast`` is the recipe for learning fast at small scale on a CPU (tuned on the demo's
captioned shapes at 16-64 px, bench/learning.md holds the measurements and the ablation table).
Every choice is an explicit keyword here; no reference default changes. ``Recipe.with_reference``
switches one choice back to the reference's, for ablations.

    recipe = small_fast(32, text_embed_dim=32, text_encoder_name="path/to/t5")
    imagen = recipe.config.create(seed=0)
    trainer = ImagenTrainer(imagen, **recipe.trainer_options)
    images = trainer.sample(texts=[...], **recipe.sample_options)
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from imagen.text import DEFAULT_T5_NAME

from .config import CascadeConfig, ElucidatedImagenConfig

__all__ = ["PRESETS", "Recipe", "preset", "preset_config", "small_fast"]

LOWEST_RESOLUTION = 8  # the base U-Net halves down to 8 px, where it cross-attends to the text


@attrs.frozen(kw_only=True)
class Recipe:
    """A named cascade config plus what to train and sample it with.

    ``trainer_options``: ``ImagenTrainer`` keywords (lr, warm-up, decay, EMA, clipping);
    ``batch_size``: per training step; ``sample_options``: ``sample`` keywords (guidance);
    the sampler and its step count live in ``config``. ``reference`` holds, for each choice, the
    changes that put the reference's setting back (see :meth:`with_reference`): only the choices
    where the recipe differs from the reference (at 16 px, say, it adds no coordinate channels).
    """

    name: str
    config: CascadeConfig
    trainer_options: dict = attrs.field(factory=dict)
    batch_size: int = 32
    sample_options: dict = attrs.field(factory=dict)
    reference: dict = attrs.field(factory=dict, repr=False)

    def with_reference(self, choice: str) -> Recipe:
        """This recipe with one choice (a key of ``reference``) switched back to the reference's."""
        if choice not in self.reference:
            raise ValueError(f"unknown choice {choice!r} for recipe {self.name!r}; expected one of "
                             f"{sorted(self.reference)}")
        change = self.reference[choice]
        config = self.config.to_dict()
        kind = change.get("kind", config["kind"])
        if kind != config["kind"]:  # a different cascade kind keeps only the settings both kinds share
            shared = {f.name for f in attrs.fields(CascadeConfig)}
            config = {k: v for k, v in config.items() if k in shared}
        config.update(kind=kind, **change.get("config", {}))
        for index, unet_change in enumerate(change.get("unets", ())):
            if unet_change is not None:
                config["unets"][index] = unet_change
        return attrs.evolve(
            self, name=f"{self.name} with the reference's {choice}", config=CascadeConfig.from_dict(config),
            trainer_options={**self.trainer_options, **change.get("trainer", {})},
            batch_size=change.get("batch_size", self.batch_size),
            sample_options={**self.sample_options, **change.get("sample", {})},
        )


def _base_unet(size: int) -> dict:
    """The base U-Net of ``small_fast`` at ``size`` px: halves down to 8 px (one level per halving;
    above 16 px it halves once before its first level, the reference's ``memory_efficient``, so its
    levels are the 16 px U-Net's, which learns the layout several times faster per step than one
    with a level at full size: bench/learning.md), cross-attends to the text at the levels after
    the first at 16 px or below, no self-attention,
    a small ``cond_dim``, the text padding hidden from attention (the captions are short), group
    norms in the resnet blocks (the reference's per-pixel RMS norm erases the border trace a
    convolutional U-Net reads absolute position from: bench/cli_demo_tune.md), and above 16 px the
    pixel coordinates as two more input channels (position as an input: bench/learning.md)."""
    efficient = size > 16  # halve once before the first level (the reference's memory_efficient)
    inner = size // 2 if efficient else size
    levels = int(math.log2(inner // LOWEST_RESOLUTION)) + 1
    return dict(
        dim=32, dim_mults=(1, 2, 4, 4, 8)[:levels], num_resnet_blocks=1, layer_attns=False, memory_efficient=efficient,
        layer_cross_attns=tuple(i >= 1 and inner >> i <= 16 for i in range(levels)), attend_at_middle=False,
        attn_heads=4, attn_dim_head=16, cond_dim=64, init_cross_embed=False, init_conv_kernel_size=3,
        use_global_context_attn=False, attn_pool_text=False, mask_text_padding=True, block_norm="group",
        coordinate_channels=efficient,
    )


REFERENCE_P_MEAN = -1.2  # ElucidatedImagen's (EDM's) mean log training noise level


def _base_p_mean(size: int) -> float:
    """The base stage's mean log training noise level: EDM's -1.2 at 16 px, shifted up by log(size / 16).
    The layout (where the shape goes) is decided at the noise levels where a blob is just visible,
    and averaging over 4x the pixels makes a blob visible at twice the noise level."""
    return REFERENCE_P_MEAN + math.log(size / 16)


def _sr_unet() -> dict:
    """A small convolutional super-resolution U-Net (no attention: the base image carries the layout)."""
    return dict(
        dim=16, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=False, layer_cross_attns=False,
        attend_at_middle=False, attn_heads=2, attn_dim_head=16, cond_dim=32, init_cross_embed=False,
        init_conv_kernel_size=3, use_global_context_attn=False, attn_pool_text=False, mask_text_padding=True,
        block_norm="group",
    )


def _reference_unet(unet: dict) -> dict:
    """The U-Net keywords the issue's seed gives (everything else the reference's defaults)."""
    return dict(dim=32, cond_dim=128, dim_mults=unet["dim_mults"], num_resnet_blocks=2,
                layer_attns=tuple(i > 0 for i in range(len(unet["dim_mults"]))),
                layer_cross_attns=tuple(i > 0 for i in range(len(unet["dim_mults"]))))


def small_fast(image_sizes: int | tuple[int, ...] = 32, *, text_embed_dim: int | None = None,
               text_encoder_name: str = DEFAULT_T5_NAME, total_steps: int | None = None,
               max_text_len: int | None = None) -> Recipe:
    """The ``small-fast`` recipe: an EDM (``ElucidatedImagen``) cascade of one base stage at
    ``image_sizes[0]`` (a power of two >= 8 px) and, when a second size is given, a small
    super-resolution stage, trained with a high learning rate after a short warm-up and a fast EMA,
    the base stage's log-normal training noise shifted up by log(size / 16) above 16 px, sampled
    with 16 DPM-Solver++(2M) steps and guidance 4.

    ``total_steps`` (the training steps planned) adds a cosine learning-rate decay over them.
    ``max_text_len`` (default the U-Net's 256) is how many text positions the U-Nets keep: captions
    longer in tokens are cut (as the reference's U-Net cuts them). With the padding hidden the
    conditional branch sees the same tokens, and a short bound saves the attention over padding;
    a dropped (null) sample attends to that many learned null tokens.
    """
    sizes = (image_sizes,) if isinstance(image_sizes, int) else tuple(image_sizes)
    if not sizes or len(sizes) > 2 or any(isinstance(s, bool) or not isinstance(s, int) for s in sizes):
        raise ValueError(f"image_sizes must be one or two ints (base, super-resolution), got {image_sizes!r}")
    base = sizes[0]
    if base < LOWEST_RESOLUTION or base & (base - 1):
        raise ValueError(f"image_sizes[0] must be a power of two >= {LOWEST_RESOLUTION}, got {base}")
    if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                    or total_steps < 1):
        raise ValueError(f"total_steps must be None or an int >= 1, got {total_steps!r}")
    unets = [_base_unet(base)] + [_sr_unet()] * (len(sizes) - 1)
    if max_text_len is not None:  # fewer text positions: less attention over hidden padding
        unets = [dict(unet, max_text_len=max_text_len) for unet in unets]
    config = ElucidatedImagenConfig(
        unets=unets, image_sizes=sizes, text_encoder_name=text_encoder_name, text_embed_dim=text_embed_dim,
        cond_drop_prob=0.1, num_sample_steps=16, sampler="dpmpp_2m", lowres_sample_noise_level=0.2,
        P_mean=(_base_p_mean(base),) + (REFERENCE_P_MEAN,) * (len(sizes) - 1),
        resize_mode="bilinear", random_crop_sizes=None if len(sizes) == 1 else (None, base),
    )
    trainer: dict[str, Any] = dict(lr=2e-3, warmup_steps=50, max_grad_norm=1.0, ema_beta=0.99,
                                   ema_update_after_step=10, ema_update_every=1)
    if total_steps is not None:
        trainer["cosine_decay_max_steps"] = total_steps
    reference_trainer = {"lr": 1e-4, "warmup_steps": None, "max_grad_norm": None, "cosine_decay_max_steps": None}
    reference = {
        "unet": {"unets": [_reference_unet(unets[0])]},
        "objective": {"kind": "Imagen", "config": {"timesteps": 16}},  # VP, noise prediction, same sampler
        "lr": {"trainer": {k: reference_trainer[k] for k in ("lr", "cosine_decay_max_steps")}},
        "warmup": {"trainer": {"warmup_steps": None}},
        "ema": {"trainer": {"ema_beta": 0.9999, "ema_update_after_step": 100, "ema_update_every": 10}},
        "cond_drop": {"config": {"cond_drop_prob": 0.5}},
        "text_padding": {"unets": [dict(unets[0], mask_text_padding=False, max_text_len=256)]},
        "block_norm": {"unets": [dict(unets[0], block_norm="rms")]},
        "coordinates": {"unets": [dict(unets[0], coordinate_channels=False)]},
        "noise_levels": {"config": {"P_mean": REFERENCE_P_MEAN}},
        "sampler": {"config": {"sampler": None, "num_sample_steps": 32}},
        "guidance": {"sample": {"cond_scale": 1.0}},
    }
    if base <= 16:  # the choices the recipe makes only above 16 px: nothing to switch back here
        del reference["coordinates"], reference["noise_levels"]
    return Recipe(name="small-fast", config=config, trainer_options=trainer, batch_size=32,
                  sample_options=dict(cond_scale=4.0), reference=reference)


PRESETS = {"small-fast": small_fast}


def preset(name: str, *args, **options) -> Recipe:
    """The recipe called ``name`` (a key of ``PRESETS``), built with ``options``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name](*args, **options)


def preset_config(cls: type[CascadeConfig], name: str, *args, **options) -> CascadeConfig:
    """The config of the recipe called ``name``; ``cls`` (a config class) must be its kind or a base of it.
    ``CascadeConfig.preset`` / ``ElucidatedImagenConfig.preset`` call this."""
    config = preset(name, *args, **options).config
    if not isinstance(config, cls):
        raise ValueError(f"preset {name!r} builds a {type(config).__name__}, not a {cls.__name__}")
    return config
