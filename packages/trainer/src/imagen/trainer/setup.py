"""Setting the trainer up on accelerate: the Accelerator, the training precision, per-unet options,
the seeding of layers that draw on their own, and the process group's teardown at exit."""

from __future__ import annotations

import atexit
import contextlib

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType

from imagen.diffusion import randint

from .fsdp import fsdp_version

__all__ = [
    "PRECISIONS", "autocast", "layer_randomness", "make_accelerator", "per_unet", "register_teardown",
    "training_precision",
]

PRECISIONS = {None: None, "no": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Accepted ``precision`` values and the autocast dtype of each (None: full precision)."""

_UNSUPPORTED = (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
"""accelerate set-ups the trainer refuses (FSDP2 is supported: :mod:`imagen.trainer.fsdp`; FSDP1 is refused there)."""
_teardown_registered = False


def make_accelerator(accelerate_kwargs: dict, log_with=None) -> Accelerator:
    """An ``Accelerator(**accelerate_kwargs)``; DDP looks for unused parameters (a stage may leave
    some unused, e.g. the text layers of an unconditional cascade) unless ``kwargs_handlers`` are
    given; with ``log_with`` the trackers are started under the project name ``"imagen"``."""
    accelerate_kwargs = dict(accelerate_kwargs)
    if log_with is not None:
        accelerate_kwargs.setdefault("log_with", log_with)
    accelerate_kwargs.setdefault("kwargs_handlers", [DistributedDataParallelKwargs(find_unused_parameters=True)])
    accelerator = Accelerator(**accelerate_kwargs)
    if log_with is not None:
        accelerator.init_trackers("imagen")
    return accelerator


def training_precision(accelerator, precision: str | None) -> str | None:
    """The precision to train with: ``precision``, or the accelerator's mixed precision when
    ``precision`` is None. Refuses accelerate set-ups the trainer does not support. (accelerate's
    ``gradient_accumulation_steps`` k is honoured by :class:`~imagen.trainer.stage.StageOptimization`:
    every k-th ``update`` steps.)"""
    if accelerator.distributed_type in _UNSUPPORTED:
        raise ValueError(
            f"accelerate's {accelerator.distributed_type.value} is not supported by ImagenTrainer; use DDP "
            "(multi_gpu / multi_cpu) or FSDP2 (--use_fsdp --fsdp_version 2)"
        )
    fsdp_version(accelerator)  # refuses FSDP1
    mixed = accelerator.mixed_precision
    if mixed in (None, "no"):
        return precision
    if precision is None and mixed in ("fp16", "bf16"):
        return mixed
    if precision != mixed:
        raise ValueError(
            f"precision={precision!r} conflicts with the accelerator's mixed_precision={mixed!r}; accepted: the same "
            "value, or precision=None to adopt it"
        )
    return precision


def autocast(device: torch.device, precision: str | None):
    """``torch.autocast`` to ``precision``'s dtype on ``device``, or a no-op in full precision."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def layer_randomness(generator: torch.Generator, device: torch.device):
    """Runs the block with the global RNG of the CPU and of ``device`` (a CUDA device) seeded from
    one draw of ``generator`` (a CPU generator: no host sync), and restores both afterwards.

    Layers that draw on their own from the global RNG (``nn.Dropout``) then follow ``generator``,
    which checkpoints save and restore, so a resumed run draws the same masks as an uninterrupted
    one; the caller's global RNG is left as it was."""
    seed = int(randint(0, 2**62, (), generator))
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def per_unet(value, num_unets: int, name: str) -> tuple:
    """One value per unet: ``value`` repeated, or a tuple / list of ``num_unets`` values."""
    if isinstance(value, (tuple, list)):
        if len(value) != num_unets:
            raise ValueError(f"{name} gives {len(value)} values for a cascade of {num_unets} unets: {value!r}")
        return tuple(value)
    return (value,) * num_unets


def _end_processes(accelerator) -> None:
    with contextlib.suppress(Exception):
        accelerator.wait_for_everyone()  # no process tears down while another still talks to it
    with contextlib.suppress(Exception):
        accelerator.state.destroy_process_group()


def register_teardown(accelerator) -> None:
    """With several processes, tear the process group down at exit (once per interpreter): gloo
    aborts the interpreter when it is left alive."""
    global _teardown_registered
    if accelerator.num_processes > 1 and not _teardown_registered:
        atexit.register(_end_processes, accelerator)
        _teardown_registered = True
