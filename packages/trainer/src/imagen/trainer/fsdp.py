"""FSDP2 for the trained stage: ``fully_shard`` of its U-Net, its optimizer and EMA kept in step.

The accelerate config decides: ``accelerate launch --use_fsdp --fsdp_version 2`` (or ``accelerate
config`` with FSDP, version 2). accelerate 1.x turns FSDP on only for GPU-type backends (on CPU
processes it reports MULTI_CPU and leaves ``ACCELERATE_USE_FSDP`` / ``FSDP_VERSION`` in the
environment), and its own FSDP2 preparation knows nothing of an EMA copy or of optimizer state
loaded from a checkpoint before the stage is first trained. So the trainer shards the stage
itself, the same way on every backend, when the configuration asks for FSDP2:

- rank 0's weights (and EMA weights) are broadcast first, as DDP would;
- ``fully_shard`` on each residual and attention block of the U-Net (:data:`BLOCK_CLASSES`) and
  then on the U-Net, over a 1-D mesh of every process (``FSDP_RESHARD_AFTER_FORWARD`` as
  accelerate reads it);
- the optimizer's parameter groups (and any state loaded before) move to the sharded parameters;
- the EMA copy's parameters become ``DTensor``s with the same placements (no FSDP hooks: its
  update is a local lerp of each rank's shard).

FSDP1 is refused. Checkpoints of a sharded stage: weights and EMA are gathered
(``full_tensor``, every rank takes part) for the consolidated files, the optimizer state is
saved sharded through DCP (:mod:`imagen.trainer.sharded_state`).
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from accelerate.utils import DistributedType
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

__all__ = [
    "fsdp_version", "full_tensor", "gradient_sync", "is_dtensor", "is_sharded", "load_module_state", "shard_stage",
]


def fsdp_version(accelerator) -> int | None:
    """2 when the accelerate configuration asks for FSDP2, None without FSDP; FSDP1 is refused."""
    if accelerator.distributed_type == DistributedType.FSDP:
        version = int(getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1))
    elif os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and accelerator.num_processes > 1:
        version = int(os.environ.get("FSDP_VERSION", "1"))
    else:
        return None
    if version != 2:
        raise ValueError(f"accelerate's FSDP version {version} is not supported by ImagenTrainer; use FSDP2 "
                         "(accelerate launch --use_fsdp --fsdp_version 2, or fsdp_version: 2 in the accelerate config)")
    return version


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a ``DTensor`` (a sharded stage)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def is_dtensor(tensor) -> bool:
    """Whether ``tensor`` is a (sharded) ``DTensor``."""
    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a ``DTensor`` gathered (a collective), anything else unchanged."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


BLOCK_CLASSES = ("ResnetBlock", "TransformerBlock", "LinearAttentionTransformerBlock")
"""The U-Net blocks sharded as units (tensor in, tensor out) unless ``FSDP_TRANSFORMER_CLS_TO_WRAP``
(accelerate's setting, comma-separated class names) names others. The down and up stages are
not: their forward appends to and pops from a list of skips, and FSDP's pre-forward hook passes
a copy of its arguments."""


def _blocks(unet: nn.Module) -> list[nn.Module]:
    """The U-Net's modules to shard as units, innermost first."""
    names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    wanted = {n.strip() for n in names.split(",") if n.strip()} or set(BLOCK_CLASSES)
    return [m for m in reversed(list(unet.modules())) if m is not unet and type(m).__name__ in wanted]


@torch.no_grad()
def _broadcast(module: nn.Module) -> None:
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def _shard_like(value: torch.Tensor, param: DTensor) -> torch.Tensor:
    """``value`` (a tensor every rank holds whole) as a ``DTensor`` laid out like ``param``, when
    it has the parameter's shape; other values (Adam's ``step``) unchanged. No communication."""
    if isinstance(value, DTensor) or tuple(value.shape) != tuple(param.shape):
        return value
    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def shard_stage(stage, accelerator) -> None:
    """Shards ``stage``'s U-Net with FSDP2 in place, and moves its optimizer and EMA along (see
    the module docstring). Every process calls it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    unet = stage.unet
    _broadcast(unet)
    if stage.ema is not None:
        _broadcast(stage.ema.ema_model)
    names = {id(p): name for name, p in unet.named_parameters()}
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() not in ("false", "0", "no")
    for block in _blocks(unet):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(unet, mesh=mesh, reshard_after_forward=reshard)
    sharded = dict(unet.named_parameters())
    optimizer = stage.optimizer
    for group in optimizer.param_groups:
        old = group["params"]
        group["params"] = [sharded[names[id(p)]] for p in old]
        for before, after in zip(old, group["params"]):
            if before in optimizer.state:
                state = optimizer.state.pop(before)
                optimizer.state[after] = {k: _shard_like(v, after) if torch.is_tensor(v) else v
                                          for k, v in state.items()}
    if stage.ema is not None:
        for name, param in list(stage.ema.ema_model.named_parameters()):
            owner, _, leaf = name.rpartition(".")
            module = stage.ema.ema_model.get_submodule(owner) if owner else stage.ema.ema_model
            module.register_parameter(leaf, nn.Parameter(_shard_like(param.data, sharded[name]),
                                                         requires_grad=False))


def gradient_sync(unet: nn.Module, sync: bool):
    """The context of one chunk's backward on a sharded U-Net: gradients are reduce-scattered only
    when ``sync`` (the last chunk)."""
    if sync:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def local():
        unet.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            unet.set_requires_gradient_sync(True)

    return local()


@torch.no_grad()
def load_module_state(module: nn.Module, state: dict[str, torch.Tensor], *, strict: bool = True) -> None:
    """``module.load_state_dict(state)`` where ``state`` holds whole tensors, also when some of
    ``module``'s parameters are sharded ``DTensor``s (each rank keeps its shard; no communication)."""
    own = module.state_dict()
    if not any(isinstance(t, DTensor) for t in own.values()):
        module.load_state_dict(state, strict=strict)
        return
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if strict and (missing or unexpected):
        raise RuntimeError(f"state does not fit {type(module).__name__}: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    for key, target in own.items():
        if key not in state:
            continue
        value = state[key]
        if isinstance(target, DTensor):
            target.to_local().copy_(_shard_like(value, target).to_local())
        else:
            target.copy_(value)
