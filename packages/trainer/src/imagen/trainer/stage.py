"""The optimisation state of one stage of a cascade, and its update through accelerate.

A :class:`StageOptimization` owns a stage's optimizer, LR schedule, gradient scaler, EMA copy and
step counters. The first time the stage is trained it hands its U-Net and optimizer to
``accelerator.prepare`` (DistributedDataParallel with several processes); from then on gradients
reach the weights only through accelerate: ``accelerator.backward``, ``accelerator.no_sync`` for
all but the last chunk of a batch, ``accelerator.clip_grad_norm_`` and the prepared optimizer's
``step``. The LR schedule is not prepared: accelerate steps a prepared scheduler once per process
per optimizer step (unless it splits batches), which would tie the warm-up to the world size; ours
counts optimizer steps, the same on every rank.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch import nn

from . import fsdp

__all__ = ["NonFiniteTrainingError", "StageOptimization", "any_process"]

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Raised when too many consecutive steps had a non-finite loss or gradient."""


def any_process(accelerator, flag: bool) -> bool:
    """Whether ``flag`` is true on any process (one all-reduce through ``accelerator.reduce``), so
    that every rank takes the same branch."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


class StageOptimization:
    """Optimizer, LR scheduler, grad scaler, EMA and counters of stage ``index`` (0-based).

    ``scaler`` is either the trainer's own ``torch.amp.GradScaler`` (disabled unless fp16) or the
    accelerator's (accelerate's fp16 on a GPU); :meth:`backward` and :meth:`step` use it
    accordingly. ``prepared_unet`` / ``prepared_optimizer`` are None until :meth:`prepare`.
    """

    def __init__(self, index: int, unet: nn.Module, optimizer, scheduler, scaler, ema=None, max_grad_norm=None):
        self.index, self.unet = index, unet
        self.optimizer, self.scheduler, self.scaler, self.ema = optimizer, scheduler, scaler, ema
        self.max_grad_norm = max_grad_norm
        self.prepared_unet = None
        self.prepared_optimizer = None
        self.sharded = False
        self.micro_steps = 0
        """``update`` calls since the last optimizer step (accelerate's ``gradient_accumulation_steps``)."""
        """Whether the U-Net was sharded with FSDP2 (:mod:`imagen.trainer.fsdp`) when prepared."""
        self.steps = 0
        self.nonfinite_steps = 0
        self.consecutive_nonfinite = 0
        self.nonfinite_loss = False
        self.last_grad_norm: torch.Tensor | None = None
        """The gradient norm before clipping of the last step taken (a 0-d tensor on the device)."""

    @property
    def unet_number(self) -> int:
        """The stage's 1-based number."""
        return self.index + 1

    def prepare(self, accelerator) -> nn.Module:
        """Prepares the U-Net and optimizer with ``accelerator`` (once) and returns the prepared
        U-Net, the module to call in training forwards (DDP broadcasts rank 0's weights here)."""
        if self.prepared_unet is None and fsdp.fsdp_version(accelerator) == 2:
            fsdp.shard_stage(self, accelerator)  # FSDP2: sharded in place (imagen.trainer.fsdp)
            self.prepared_unet, self.prepared_optimizer, self.sharded = self.unet, self.optimizer, True
        if self.prepared_unet is None:
            self.prepared_unet, self.prepared_optimizer = accelerator.prepare(self.unet, self.optimizer)
        return self.prepared_unet

    def unwrapped_unet(self, accelerator) -> nn.Module:
        """The plain U-Net (``accelerator.unwrap_model`` of the prepared one), whose weights are saved."""
        if self.prepared_unet is None or self.prepared_unet is self.unet:
            return self.unet
        unet = accelerator.unwrap_model(self.prepared_unet)
        assert unet is self.unet, "accelerate.prepare must wrap the cascade's own U-Net, not a copy"
        return unet

    def no_sync(self, accelerator, sync: bool):
        """The context of one chunk's forward and backward: gradients are all-reduced only when
        ``sync`` (the last chunk); before that they accumulate locally."""
        sync = sync and self.micro_steps + 1 >= accelerator.gradient_accumulation_steps  # the step's last call
        if self.sharded:  # FSDP2, sharded by us
            return fsdp.gradient_sync(self.unet, sync)
        return contextlib.nullcontext() if sync else accelerator.no_sync(self.prepared_unet)

    def _own_scaler(self, accelerator) -> bool:
        return self.scaler is not accelerator.scaler

    def backward(self, accelerator, loss: torch.Tensor) -> None:
        """``accelerator.backward`` of the loss, scaled by our scaler (accelerate scales by its own)."""
        if not torch.isfinite(loss.detach()):
            self.nonfinite_loss = True
        accelerator.backward(self.scaler.scale(loss) if self._own_scaler(accelerator) else loss)

    def step(self, accelerator, max_consecutive_nonfinite: int) -> bool:
        """Unscale, clip (``accelerator.clip_grad_norm_``), and step the optimizer, scheduler and EMA
        unless the loss or the gradient was non-finite on any process: then the step is skipped,
        logged and counted on every rank, and ``max_consecutive_nonfinite`` skips in a row raise
        :class:`NonFiniteTrainingError`. Returns whether the step was taken."""
        self.prepare(accelerator)
        self.micro_steps += 1
        if self.micro_steps < accelerator.gradient_accumulation_steps:
            return False  # accumulating: accelerator.backward divided each loss by the number of calls
        self.micro_steps = 0
        optimizer = self.prepared_optimizer
        if self._own_scaler(accelerator):
            self.scaler.unscale_(optimizer)  # accelerate unscales its own scaler inside clip_grad_norm_
        params = [p for p in self.unet.parameters() if p.requires_grad]
        max_norm = self.max_grad_norm if self.max_grad_norm is not None else math.inf
        norm = fsdp.full_tensor(accelerator.clip_grad_norm_(params, max_norm))  # a DTensor when sharded
        bad = any_process(accelerator, self.nonfinite_loss or not bool(torch.isfinite(norm)))
        self.nonfinite_loss = False
        if bad:
            self.scaler.update()  # lowers the fp16 loss scale; a no-op when disabled
            optimizer.zero_grad(set_to_none=True)
            self._count_nonfinite(max_consecutive_nonfinite)
            return False
        if self._own_scaler(accelerator):
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()  # accelerate's optimizer steps and updates its scaler
        optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.last_grad_norm = norm.detach()
        if self.ema is not None:
            self.ema.update()
        self.steps += 1
        self.consecutive_nonfinite = 0
        return True

    def _count_nonfinite(self, limit: int) -> None:
        self.nonfinite_steps += 1
        self.consecutive_nonfinite += 1
        logger.warning(
            "unet %d: non-finite loss or gradient, step skipped (%d in a row, %d in all)",
            self.unet_number, self.consecutive_nonfinite, self.nonfinite_steps,
        )
        if self.consecutive_nonfinite >= limit:
            raise NonFiniteTrainingError(
                f"unet {self.unet_number}: {self.consecutive_nonfinite} consecutive steps with a non-finite "
                "loss or gradient; training stopped before NaN could reach the weights (lower lr, set "
                "max_grad_norm, or check the data)"
            )
