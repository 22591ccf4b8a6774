"""Opt-in memory settings of the trainer: where the stages that are not training (and the EMA
copies) live. (``ImagenTrainer(compile=)`` is read by :func:`imagen.cascade.compile_options_of`,
as ``sample(compile=)`` is.) :class:`StagePlacement` implements
``ImagenTrainer(use_one_unet_in_gpu=True)`` (the reference trainer's ``get_unet`` semantics): only
the stage that trains or samples is on the accelerator, with its optimizer state and EMA copy; every
other U-Net, its Adam moments and its EMA copy wait on the CPU. ``ema_device="cpu"`` keeps every EMA
copy on the CPU for good (ema-pytorch then copies the online weights over at each EMA update).
Wherever an EMA copy's weights go, its counters stay on the CPU (:func:`move_ema`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["StagePlacement", "check_device", "move_ema", "move_optimizer_state", "move_stage_unet"]

CPU = torch.device("cpu")


def check_device(value, name: str) -> torch.device | None:
    """``value`` (None, a device name or a ``torch.device``) as a device; a ValueError naming ``name``."""
    if value is None:
        return None
    try:
        return torch.device(value)
    except (TypeError, RuntimeError) as error:
        raise ValueError(f"{name} must be None or a device such as 'cpu', got {value!r} ({error})") from None


def move_ema(ema: nn.Module, device: torch.device) -> None:
    """An ``ema_pytorch.EMA``'s averaged weights to ``device``; its ``step`` and ``initted`` counters stay on
    the CPU, where the ``.item()`` reads of every ``update()`` cost no device-to-host sync."""
    ema.ema_model.to(device)


def _device_of(module: nn.Module) -> torch.device | None:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return None if tensor is None else tensor.device


def move_optimizer_state(optimizer: torch.optim.Optimizer, params, device: torch.device) -> None:
    """Moves the state tensors of ``params`` (moments, and ``step`` where the group keeps it on the
    parameter's device: ``capturable`` / ``fused``) to ``device``, as ``Optimizer.load_state_dict``
    places them."""
    wanted = {id(p) for p in params}
    for group in optimizer.param_groups:
        step_on_device = bool(group.get("capturable") or group.get("fused"))
        for p in group["params"]:
            if id(p) not in wanted or p not in optimizer.state:
                continue
            state = optimizer.state[p]
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and (key != "step" or step_on_device):
                    state[key] = value.to(device, non_blocking=True)


def _rebind(optimizer: torch.optim.Optimizer, before: list, after: list) -> None:
    """Points ``optimizer`` (its groups and state) at ``after`` where ``module.to`` replaced the
    parameters ``before`` by new objects (moves between tensor types that cannot share a
    Parameter, e.g. to ``meta``, or with ``torch.__future__`` overwriting on conversion)."""
    renamed = {id(old): new for old, new in zip(before, after) if old is not new}
    if not renamed:
        return
    for group in optimizer.param_groups:
        group["params"] = [renamed.get(id(p), p) for p in group["params"]]
    for old in [p for p in optimizer.state if id(p) in renamed]:
        optimizer.state[renamed[id(old)]] = optimizer.state.pop(old)


def move_stage_unet(unet: nn.Module, device: torch.device, optimizer=None) -> None:
    """Moves a stage's U-Net to ``device`` with its gradients and, given its ``optimizer``, the
    optimizer's state of its parameters (the optimizer keeps pointing at the U-Net's parameters)."""
    before = list(unet.parameters())
    unet.to(device)
    if optimizer is not None:
        after = list(unet.parameters())
        _rebind(optimizer, before, after)
        move_optimizer_state(optimizer, after, device)


class StagePlacement:
    """Where the stages of a cascade live during training.

    ``device`` is the accelerator (``accelerator.device``). With ``one_unet_on_device`` only the active
    stage's U-Net (with its optimizer state, and its EMA copy unless ``ema_device`` is set) is on
    ``device``; the others are on the CPU. ``ema_device`` (e.g. ``"cpu"``) pins every EMA copy there.
    On a CPU ``device`` everything is on the CPU anyway and only ``ema_device`` can move anything.
    A stage that accelerate wrapped in DistributedDataParallel stays on the device (its reducer is
    bound there).
    """

    def __init__(self, device: torch.device, *, one_unet_on_device: bool = False, ema_device=None):
        self.device = torch.device(device)
        self.one_unet_on_device = bool(one_unet_on_device)
        self.ema_device = check_device(ema_device, "ema_device")
        self.active: int | None = None

    @property
    def offloads(self) -> bool:
        """Whether idle stages leave the device (the option is on and the device is not the CPU)."""
        return self.one_unet_on_device and self.device != CPU

    def home(self, index: int, active: int | None) -> torch.device:
        """Where stage ``index``'s U-Net belongs while stage ``active`` (or none) trains or samples."""
        return self.device if not self.offloads or index == active else CPU

    def ema_home(self, index: int, active: int | None) -> torch.device:
        return self.ema_device if self.ema_device is not None else self.home(index, active)

    def place_cascade(self, imagen: nn.Module) -> None:
        """The cascade on the device, its U-Nets where no stage is active puts them (no idle U-Net
        visits the device on the way)."""
        if not self.offloads:
            imagen.to(self.device)
            return
        imagen.unets.to(CPU)
        for child in imagen.children():
            if child is not imagen.unets:
                child.to(self.device)
        imagen._apply(lambda t: t.to(self.device), recurse=False)  # the cascade's own buffers (its device)

    def place_ema(self, ema: nn.Module, index: int) -> None:
        """A new EMA copy of stage ``index`` where it belongs now."""
        move_ema(ema, self.ema_home(index, self.active))

    def activate(self, unets, stages: dict, index: int | None) -> None:
        """Stage ``index`` (0-based; None: none) becomes the one on the device: every U-Net, its
        optimizer state and its EMA copy move where :meth:`home` / :meth:`ema_home` say. A no-op
        when nothing changes."""
        if not self.offloads or index == self.active:
            self.active = index
            return
        for i, unet in enumerate(unets):
            stage = stages.get(i)
            if stage is not None and stage.prepared_unet is not None and stage.prepared_unet is not unet:
                continue  # wrapped by DistributedDataParallel: bound to the device
            home = self.home(i, index)
            if _device_of(unet) not in (None, home):
                move_stage_unet(unet, home, stage.optimizer if stage is not None else None)
            if stage is not None and stage.ema is not None and self.ema_device is None:
                move_ema(stage.ema, self.ema_home(i, index))
        self.active = index

    @contextlib.contextmanager
    def all_on_device(self, unets, stages: dict):
        """Within the block every U-Net (and EMA copy that follows its stage) is on the device (for a
        caller that asks for it, e.g. ``sample(use_one_unet_in_gpu=False)``); afterwards the stage
        that was active is again the only one there."""
        if not self.offloads:
            yield
            return
        previous = self.active
        for unet in unets:
            unet.to(self.device)
        self.active = -1  # no single stage is the active one
        try:
            yield
        finally:
            self.activate(unets, stages, previous)
