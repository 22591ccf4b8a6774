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
