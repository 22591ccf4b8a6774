"""Argument checks that raise ValueError/TypeError naming the parameter, the value and what is accepted."""

from __future__ import annotations

from typing import Any

import torch

RESIZE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def per_stage(name: str, value: Any, stages: int, kind: type) -> tuple:
    """``value`` (one ``kind`` or a tuple/list of one per stage) as a tuple of length ``stages``."""
    if isinstance(value, (tuple, list)):
        if len(value) != stages:
            raise ValueError(
                f"{name} has {len(value)} entries {tuple(value)!r} but dim_mults has {stages} stages: "
                f"give one {kind.__name__} or a tuple of {stages}"
            )
        values = tuple(value)
    else:
        values = (value,) * stages
    for v in values:
        if kind is bool and not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool or a tuple of bools, got {value!r}")
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise TypeError(f"{name} must be an int or a tuple of ints, got {value!r}")
    return values


def at_least(name: str, value: Any, minimum: int) -> None:
    """An int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_dims(name: str, value: Any) -> tuple[int, ...]:
    """A non-empty tuple of positive ints."""
    if not isinstance(value, (tuple, list)) or not value:
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {value!r}")
    for v in value:
        at_least(name, v, 1)
    return tuple(value)


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_tensor(name: str, value: Any, ndim: int, shape_doc: str) -> torch.Tensor:
    """A tensor with ``ndim`` dimensions."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor {shape_doc}, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}D {shape_doc}, got shape {tuple(value.shape)}")
    return value


def check_channels(name: str, value: torch.Tensor, channels: int, what: str) -> None:
    """``value.shape[1] == channels``."""
    if value.shape[1] != channels:
        raise ValueError(f"{name} has {value.shape[1]} channels (shape {tuple(value.shape)}) but {what} is {channels}")


# Upper bounds: a config that would allocate more than any accelerator holds fails at once, naming
# the field, instead of trying to allocate terabytes.
MAX_SIZE = 65_536  # any width, length, count or depth keyword
MAX_KERNEL_SIZE = 255
MAX_FF_MULT = 64.0
MAX_PARAMETERS = 10**10  # ~40 GB of float32 weights; the estimate below is a lower bound
_KERNEL_KEYWORDS = ("init_conv_kernel_size", "final_conv_kernel_size", "init_cross_embed_kernel_sizes",
                    "cross_embed_downsample_kernel_sizes")


def _ints(value: Any) -> tuple:
    """The ints in ``value`` (an int or a tuple/list of them; other values give none)."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    return tuple(v for v in items if isinstance(v, int) and not isinstance(v, bool))


def check_kinds(keywords: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Keywords whose default is a bool must be bools (or, per stage, tuples of bools): ``lowres_cond=-1``
    built a convolution with 0 input channels. Keywords whose default is a float must be numbers."""
    for name, value in keywords.items():
        default = defaults.get(name)
        if isinstance(default, bool):
            items = value if name in _PER_STAGE_FLAGS and isinstance(value, (tuple, list)) else (value,)
            if not all(isinstance(v, bool) for v in items):
                accepted = "a bool or a tuple of bools (one per stage)" if name in _PER_STAGE_FLAGS else "True or False"
                raise TypeError(f"{name} must be {accepted}, got {value!r}")
        elif isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{name} must be a number, got {value!r}")


_PER_STAGE_FLAGS = ("layer_attns", "layer_cross_attns", "use_linear_attn", "use_linear_cross_attn")


def check_bounds(kind: str, keywords: dict[str, Any]) -> None:
    """Refuse keywords above the upper bounds, and configs whose estimated parameter count exceeds
    ``MAX_PARAMETERS``. Values of the wrong type are left to the constructor's own checks."""
    for name, value in keywords.items():
        limit = MAX_KERNEL_SIZE if name in _KERNEL_KEYWORDS else MAX_SIZE
        for v in _ints(value):
            if v > limit:
                raise ValueError(f"{name} must be at most {limit}, got {value!r}")
    ff_mult = keywords.get("ff_mult")
    if isinstance(ff_mult, (int, float)) and not ff_mult <= MAX_FF_MULT:
        raise ValueError(f"ff_mult must be a number in (0, {MAX_FF_MULT:g}], got {ff_mult!r}")
    estimate = estimated_parameters(keywords)
    if estimate > MAX_PARAMETERS:
        dims = {k: keywords[k] for k in ("dim", "dim_mults", "num_resnet_blocks", "attn_heads", "attn_dim_head")
                if k in keywords}
        raise ValueError(
            f"{kind} with {dims} would hold at least {estimate:.2e} parameters (~{estimate * 4 / 2**30:,.0f} GiB "
            f"in float32), more than the limit of {MAX_PARAMETERS:.0e}: lower dim, dim_mults or num_resnet_blocks"
        )


def estimated_parameters(keywords: dict[str, Any]) -> int:
    """A lower bound of a U-Net's parameter count: the two 3x3 convolutions of each stage's resnet
    blocks (``num_resnet_blocks + 1`` per stage at width ``dim * mult``) and the middle attention's
    projections. 0 when ``dim`` or ``dim_mults`` are not ints (the constructor refuses those)."""
    dim, mults = keywords.get("dim"), keywords.get("dim_mults")
    if not _ints(dim) or not isinstance(mults, (tuple, list)) or not mults or len(_ints(mults)) != len(mults):
        return 0
    blocks = keywords.get("num_resnet_blocks", 1)
    blocks = _ints(blocks) if isinstance(blocks, (tuple, list)) else _ints(blocks) * len(mults)
    if len(blocks) != len(mults):
        blocks = (1,) * len(mults)
    total = sum(9 * (dim * m) ** 2 * 2 * (max(b, 0) + 1) for m, b in zip(mults, blocks))
    inner = _ints(keywords.get("attn_heads", 1)) + _ints(keywords.get("attn_dim_head", 1))
    if keywords.get("attend_at_middle", True) and len(inner) == 2:
        total += 4 * dim * max(mults) * inner[0] * inner[1]
    return total
