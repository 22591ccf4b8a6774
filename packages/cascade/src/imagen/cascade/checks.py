"""Input checks at the cascade's API boundary (``forward`` and ``sample``), run once per call.

Pixel tensors are converted with the reference's meaning (uint8 divided by 255; float16 and
bfloat16 taken as float32, the dtype the cascade computes in) and refused otherwise (float64 and
integer or bool tensors other than uint8, as the reference's ``images.dtype == torch.float or
torch.half`` assertion refuses them, here with a TypeError naming the parameter). Values must be
finite and inside the cascade's pixel range ([0, 1] with ``auto_normalize_img``, else [-1, 1]),
up to ``RANGE_SLACK``. The checks cost one host sync per tensor (one ``aminmax``), never one per
sampler step.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import MAX_STEPS

__all__ = ["RANGE_SLACK", "check_inputs", "check_keywords", "check_number", "check_pixels", "pixel_range"]

RANGE_SLACK = 1e-3
"""Pixels may overshoot the range by this much (rounding in the user's own resizing)."""

_TAKEN_AS_FLOAT32 = (torch.float16, torch.bfloat16)


def pixel_range(auto_normalize_img: bool) -> tuple[float, float]:
    """The range pixels are given in: [0, 1] with ``auto_normalize_img``, else [-1, 1]."""
    return (0.0, 1.0) if auto_normalize_img else (-1.0, 1.0)


def check_pixels(name: str, images: Any, value_range: tuple[float, float]) -> torch.Tensor:
    """``images`` (a tensor or array of any shape) as float32 pixels, checked finite and in range.

    uint8 is divided by 255 (the reference's meaning); float16/bfloat16 become float32; float32 is
    kept. Raises TypeError for other dtypes and ValueError (naming ``name``, the offending value and
    the accepted range) for NaN, infinite or out-of-range pixels.
    """
    return check_inputs({name: (images, value_range)})[name]


def check_inputs(inputs: dict[str, tuple[Any, tuple[float, float] | None]]) -> dict[str, torch.Tensor]:
    """Several tensors checked with one host sync per device: ``{name: (value, range)}`` with a
    pixel range (converted and checked as ``check_pixels`` does) or None (any floating tensor,
    checked finite only, e.g. ``text_embeds``). Entries whose value is None are left out."""
    converted = {}
    for name, (value, value_range) in inputs.items():
        if value is not None:
            converted[name] = _as_pixels(name, value) if value_range is not None else _as_floating(name, value)
    by_device: dict[torch.device, list[str]] = {}
    for name, tensor in converted.items():
        by_device.setdefault(tensor.device, []).append(name)
    for names in by_device.values():
        stats = torch.stack([torch.stack(torch.aminmax(converted[n].detach().float())) for n in names])
        for name, (smallest, largest) in zip(names, stats.tolist()):  # one sync for the device
            _check_values(name, smallest, largest, inputs[name][1])
    return converted


def _as_pixels(name: str, images: Any) -> torch.Tensor:
    images = _as_tensor(name, images)
    if images.dtype == torch.uint8:
        images = images / 255
    elif images.dtype in _TAKEN_AS_FLOAT32:
        images = images.float()
    elif images.dtype != torch.float32:
        raise TypeError(
            f"{name} must be float32 (or uint8 in [0, 255], float16, bfloat16) pixels, got dtype {images.dtype}"
            + (": convert with .float()" if images.is_floating_point() else "")
        )
    return images


def _as_floating(name: str, value: Any) -> torch.Tensor:
    value = _as_tensor(name, value)
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__} ({error})") from None
    if value.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(value.shape)})")
    return value


def _check_values(name: str, smallest: float, largest: float, value_range: tuple[float, float] | None) -> None:
    finite = math.isfinite(smallest) and math.isfinite(largest)  # NaN anywhere makes aminmax NaN
    if value_range is None:
        if not finite:
            raise ValueError(f"{name} holds NaN or infinite values; it must be finite")
        return
    low, high = value_range
    if finite and low - RANGE_SLACK <= smallest and largest <= high + RANGE_SLACK:
        return
    problem = "NaN or infinite values" if not finite else f"values in [{smallest:.4g}, {largest:.4g}]"
    hint = " (a cascade with auto_normalize_img=False takes [-1, 1] pixels)" if finite and low == 0 else ""
    raise ValueError(f"{name} holds {problem}; pixels must be finite and in [{low:g}, {high:g}]{hint}")


def check_number(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in ``[low, high]``; ValueError naming ``name`` otherwise."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and low <= value <= high)
    ):
        bounds = (
            f" in [{low:g}, {high:g}]"
            if math.isfinite(low) and math.isfinite(high)
            else (f" >= {low:g}" if math.isfinite(low) else "")
        )
        raise ValueError(f"{name} must be a finite number{bounds}, got {value!r}")
    return float(value)


_NOT_PIXELS = ("text_embeds",)  # floating tensors checked finite only
MAX_SAMPLE_ELEMENTS = 2**33
"""The most values one sampled tensor may hold (32 GiB in float32): bounds ``batch_size``."""


def check_keywords(cascade, **keywords: Any) -> dict[str, Any]:
    """The tensor and number keywords of ``sample`` (or ``forward``) checked once, before any stage runs.

    Pixel keywords (``images``, ``cond_images``, ``inpaint_images``, ``inpaint_videos``,
    ``start_image_or_video``, ``init_images`` and the video conditioning frames; ``init_images`` may
    be one per unet) come back converted as ``check_pixels`` does, with one host sync for all;
    ``text_embeds`` must be finite; ``cond_scale`` (one per unet allowed) must be finite and >= 0,
    ``lowres_sample_noise_level`` finite in [0, 1], ``steps`` (one per unet allowed) and
    ``video_frames`` integers in [1, MAX_STEPS], ``batch_size`` an integer whose samples fit
    ``MAX_SAMPLE_ELEMENTS``, an int ``generator`` a seed torch takes, ``start_at_unet_number`` /
    ``stop_at_unet_number`` a unet of the cascade (named in the error). Keywords left at None come
    back as they are.
    """
    value_range = pixel_range(cascade._config.auto_normalize_img)
    checked = dict(keywords)
    tensors: dict[str, tuple[Any, tuple[float, float] | None]] = {}
    for name, value in keywords.items():
        if value is None:
            continue
        if name == "cond_scale":
            for i, scale in enumerate(_entries(value)):
                check_number(_entry_name(name, value, i), scale, low=0.0)
        elif name == "lowres_sample_noise_level":
            checked[name] = check_number(name, value, low=0.0, high=1.0)
        elif name == "steps":
            for i, count in enumerate(_entries(value)):
                if count is not None:
                    _check_count(_entry_name(name, value, i), count, MAX_STEPS)
        elif name == "batch_size":
            _check_batch_size(cascade, value, keywords.get("video_frames"))
        elif name == "video_frames":
            _check_count(name, value, MAX_STEPS)
        elif name == "generator":
            _check_seed(value)
        elif name in ("start_at_unet_number", "stop_at_unet_number"):
            cascade._index(value, name)
        elif name == "init_images" and isinstance(value, list | tuple):
            tensors.update({f"init_images[{i}]": (item, value_range) for i, item in enumerate(value)})
        else:
            tensors[name] = (value, None if name in _NOT_PIXELS else value_range)
    converted = check_inputs(tensors)
    for name in keywords:
        value = keywords[name]
        if name == "init_images" and isinstance(value, list | tuple):
            checked[name] = type(value)(converted.get(f"init_images[{i}]") for i in range(len(value)))
        elif name in converted:
            checked[name] = converted[name]
    return checked


def _check_count(name: str, value: Any, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{name} must be an integer in [1, {limit}], got {value!r}")


def _check_batch_size(cascade, batch_size: Any, frames: Any) -> None:
    _check_count("batch_size", batch_size, MAX_SAMPLE_ELEMENTS)
    side = max(cascade.image_sizes)
    per_sample = cascade.channels * side * side * (frames if isinstance(frames, int) and frames > 0 else 1)
    if batch_size * per_sample > MAX_SAMPLE_ELEMENTS:
        raise ValueError(
            f"batch_size={batch_size} of {cascade.channels} x {side} x {side} samples would need "
            f"{batch_size * per_sample * 4 / 2**30:,.0f} GiB per tensor; at most {MAX_SAMPLE_ELEMENTS // per_sample} "
            "fit the limit (sample in chunks)"
        )


def _check_seed(generator: Any) -> None:
    """An int seed must fit a torch seed (the generators take seed, seed + 1, ...)."""
    if isinstance(generator, int) and not isinstance(generator, bool) and not -(2**63) <= generator < 2**63 - 2**32:
        raise ValueError(f"generator as an int seed must lie in [-2**63, 2**63 - 2**32), got {generator!r}")


def _entries(value: Any) -> tuple:
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def _entry_name(name: str, value: Any, index: int) -> str:
    return f"{name}[{index}]" if isinstance(value, list | tuple) else name
