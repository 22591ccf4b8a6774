"""Optimizers and learning-rate schedules for one U-Net stage, and their state as tensors + JSON.

The default schedule is the reference's (:class:`WarmupCosine`: a linear warm-up times an optional
cosine decay, what imagen-pytorch gets from pytorch_warmup and ``CosineAnnealingLR``); named
schedules come from ``transformers.get_scheduler`` (:func:`make_scheduler`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "LR_SCHEDULERS",
    "WarmupCosine",
    "make_optimizer",
    "make_scheduler",
    "optimizer_state_from_tensors",
    "optimizer_state_to_tensors",
]

LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
)
"""The ``transformers.get_scheduler`` names ``lr_scheduler`` accepts (those that are a function of
the step alone; ``reduce_lr_on_plateau`` needs a metric and is not among them)."""


class WarmupCosine:
    """LR factor at scheduler step ``s``: a linear warm-up ``min(1, (s + 1) / warmup_steps)`` times a
    cosine decay ``(1 + cos(pi * min(s, T) / T)) / 2`` over ``T = cosine_decay_max_steps``; either
    part is 1 when its number of steps is None."""

    def __init__(self, warmup_steps: int | None = None, cosine_decay_max_steps: int | None = None):
        for name, value in (("warmup_steps", warmup_steps), ("cosine_decay_max_steps", cosine_decay_max_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        self.warmup_steps = warmup_steps
        self.cosine_decay_max_steps = cosine_decay_max_steps

    def __call__(self, step: int) -> float:
        factor = 1.0
        if self.warmup_steps is not None:
            factor *= min(1.0, (step + 1) / self.warmup_steps)
        if self.cosine_decay_max_steps is not None:
            t = min(step, self.cosine_decay_max_steps) / self.cosine_decay_max_steps
            factor *= 0.5 * (1.0 + math.cos(math.pi * t))
        return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str | None = None,
    *,
    warmup_steps: int | None = None,
    decay_steps: int | None = None,
    scheduler_kwargs: dict | None = None,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The stage's LR scheduler, stepped once per optimizer step.

    ``name`` None: the reference's :class:`WarmupCosine` (``warmup_steps``, cosine over
    ``decay_steps``). Otherwise one of :data:`LR_SCHEDULERS`, built by
    ``transformers.get_scheduler(name, num_warmup_steps=warmup_steps or 0,
    num_training_steps=decay_steps, scheduler_specific_kwargs=scheduler_kwargs)`` (note that its
    warm-up starts from 0 at step 0, where :class:`WarmupCosine` starts from ``1 / warmup_steps``).
    """
    if name is None:
        if scheduler_kwargs:
            raise ValueError(f"lr_scheduler_kwargs {sorted(scheduler_kwargs)} need a named lr_scheduler")
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup_steps, decay_steps))
    if name not in LR_SCHEDULERS:
        raise ValueError(f"lr_scheduler must be None (warm-up x cosine, the reference's) or one of {LR_SCHEDULERS}, "
                         f"got {name!r}")
    for parameter, value in (("warmup_steps", warmup_steps), ("cosine_decay_max_steps", decay_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{parameter} must be None or an int >= 0, got {value!r}")
    from transformers import get_scheduler

    try:
        return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps or 0, num_training_steps=decay_steps,
                             scheduler_specific_kwargs=dict(scheduler_kwargs or {}))
    except ValueError as error:
        if "num_training_steps" in str(error):
            raise ValueError(f"lr_scheduler={name!r} needs cosine_decay_max_steps (the schedule's length in steps)") \
                from None
        raise ValueError(f"lr_scheduler={name!r}: {error}") from None
    except TypeError as error:
        raise TypeError(f"lr_scheduler={name!r} does not take lr_scheduler_kwargs {scheduler_kwargs}: {error}") \
            from None


def make_optimizer(
    module: nn.Module,
    *,
    lr: float,
    eps: float,
    betas: tuple[float, float],
    weight_decay: float = 0.0,
    **adam_kwargs,
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` over the module's trainable parameters, as the reference builds it.

    ``weight_decay`` is Adam's (an L2 term added to every parameter's gradient, biases and norms
    included); other keywords (``amsgrad``, ``foreach``, ``fused``, ``maximize``, ``capturable``,
    ``differentiable``, ``decoupled_weight_decay`` for AdamW's decoupled decay) go to Adam unchanged.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(module).__name__} has no trainable parameters")
    for name, value in (("lr", lr), ("eps", eps), ("beta1", betas[0]), ("beta2", betas[1]),
                        ("weight_decay", weight_decay)):  # torch takes True and inf (issue 13 fuzzing)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, betas=betas, weight_decay=weight_decay, **adam_kwargs)
    except TypeError as error:
        raise TypeError(f"ImagenTrainer passes unknown keywords to torch.optim.Adam: {error}") from None


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    """Split ``optimizer.state_dict()`` into tensors (named ``<prefix><param id>.<key>``) and a JSON
    document holding the parameter groups and the non-tensor per-parameter values."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state_from_tensors(document: dict, tensors: dict[str, torch.Tensor], prefix: str) -> dict:
    """The inverse of :func:`optimizer_state_to_tensors`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            pid, key = name[len(prefix) :].split(".", 1)
            state.setdefault(int(pid), {})[key] = value
    for pid, values in document.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for group in document["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}
