"""The trainer's state as checkpoint tensors + JSON, and back.

Tensors: ``imagen.<key>`` (the cascade's weights, U-Nets unwrapped from accelerate),
``ema_imagen.<key>`` (the same cascade with each trained stage's EMA weights, what
``imagen.cascade.load_imagen_from_checkpoint`` reads by default), ``optim.<stage>.<param id>.<key>``
(optimizer tensors) and ``rng.<split>.<rank>`` (every process's generator state). JSON: per-unet
``steps``, ``nonfinite_steps``, ``consecutive_nonfinite``; per-stage ``ema`` counters,
``optimizers`` (groups and scalars), ``schedulers``, ``scalers``; ``data`` (stream positions) and
whatever ``meta`` the trainer adds (``num_processes``, ``seed``, ``precision``).
"""

from __future__ import annotations

import torch

from .fsdp import load_module_state
from .optim import optimizer_state_from_tensors, optimizer_state_to_tensors

__all__ = [
    "COUNTERS", "gather_generator_states",
    "pack_state", "restore_generators", "restore_training", "restore_weights", "unet_prefixes"]

COUNTERS = ("steps", "nonfinite_steps", "consecutive_nonfinite")
"""The per-stage step counters a checkpoint keeps."""


def unet_prefixes(imagen) -> dict[int, str]:
    """State-dict prefix of each stage's U-Net in ``imagen`` (``{0: "unets.0.", ...}``)."""
    names = {id(module): name for name, module in imagen.named_modules()}
    return {i: names[id(unet)] + "." for i, unet in enumerate(imagen.unets)}


def pack_state(imagen, stages: dict, accelerator, *, meta: dict, rng_states=None, data=None) -> tuple[dict, dict]:
    """``(tensors, state)`` of a checkpoint. Without ``rng_states`` the optimizer, scheduler,
    scaler, RNG and data state are left out (a weights-only checkpoint)."""
    prefixes = unet_prefixes(imagen)
    weights = dict(imagen.state_dict())
    for index, stage in stages.items():
        for key, value in stage.unwrapped_unet(accelerator).state_dict().items():
            weights[prefixes[index] + key] = value
    tensors = {f"imagen.{k}": v for k, v in weights.items()}
    state = {name: [getattr(stages.get(i), name, 0) for i in range(imagen.num_unets)] for name in COUNTERS}
    state["ema"] = {}
    ema_weights = dict(weights)
    for index, stage in stages.items():
        if stage.ema is None:
            continue
        for key, value in stage.ema.ema_model.state_dict().items():
            ema_weights[prefixes[index] + key] = value
        state["ema"][str(index)] = {"step": int(stage.ema.step.item()), "initted": bool(stage.ema.initted.item())}
    if state["ema"]:
        tensors.update({f"ema_imagen.{k}": v for k, v in ema_weights.items()})
    state.update(meta)
    if rng_states is None:
        return tensors, state
    state["optimizers"], state["schedulers"], state["scalers"] = {}, {}, {}
    for index, stage in stages.items():
        opt_tensors, document = optimizer_state_to_tensors(stage.optimizer, f"optim.{index}.")
        tensors.update(opt_tensors)
        state["optimizers"][str(index)] = document
        state["schedulers"][str(index)] = stage.scheduler.state_dict()
        state["scalers"][str(index)] = stage.scaler.state_dict()
    for name, states in rng_states.items():
        for rank, rng_state in enumerate(states):
            tensors[f"rng.{name}.{rank}"] = rng_state
    state["data"] = dict(data or {})
    return tensors, state


def restore_weights(imagen, stages: dict, ckpt, *, strict: bool = True) -> None:
    """Loads the cascade's weights and each stage's EMA weights and counters from ``ckpt``; a
    stage whose EMA is missing from the checkpoint starts its EMA from the loaded weights."""
    load_module_state(imagen, ckpt.with_prefix("imagen."), strict=strict)  # also into FSDP2-sharded stages
    ema_weights = ckpt.with_prefix("ema_imagen.")
    prefixes = unet_prefixes(imagen)
    emas = ckpt.trainer_state.get("ema", {})
    with torch.no_grad():
        for index, stage in stages.items():
            if stage.ema is None:
                continue
            prefix = prefixes[index]
            weights = {k[len(prefix) :]: v for k, v in ema_weights.items() if k.startswith(prefix)}
            if weights:
                load_module_state(stage.ema.ema_model, weights, strict=strict)
            meta = emas.get(str(index))
            if meta is not None:
                stage.ema.step.fill_(meta["step"])
                stage.ema.initted.fill_(meta["initted"])
            elif not weights:
                load_module_state(stage.ema.ema_model, stage.unet.state_dict())


def restore_training(stages: dict, ckpt) -> None:
    """Loads the step counters and each stage's optimizer, scheduler and scaler state."""
    state = ckpt.trainer_state
    for name in COUNTERS:
        for index, value in enumerate(state.get(name, ())):
            if index in stages:
                setattr(stages[index], name, int(value))
    for key, document in state.get("optimizers", {}).items():
        stage = stages[int(key)]
        stage.optimizer.load_state_dict(optimizer_state_from_tensors(document, ckpt.tensors, f"optim.{key}."))
    for key, scheduler_state in state.get("schedulers", {}).items():  # a folder checkpoint keeps its
        stage = stages.get(int(key))                                   # optimizers apart (sharded)
        if stage is None:
            continue
        stage.scheduler.load_state_dict(scheduler_state)
        if state.get("scalers", {}).get(key):
            stage.scaler.load_state_dict(state["scalers"][key])


def restore_generators(generators: dict[str, torch.Generator], ckpt, rank: int) -> None:
    """Sets each named generator to this process's (``rank``'s) saved state, when there is one."""
    for name, generator in generators.items():
        rng_state = ckpt.tensors.get(f"rng.{name}.{rank}")
        if rng_state is not None:
            generator.set_state(rng_state.to(torch.uint8))


def gather_generator_states(accelerator, generators: dict[str, torch.Generator]) -> dict[str, list[torch.Tensor]]:
    """Every process's state of each named generator (each process draws its own noise), by rank.
    A collective: every process must call it."""
    out = {}
    for name, generator in generators.items():
        rng_state = generator.get_state()
        if accelerator.num_processes > 1:
            gathered = accelerator.gather(rng_state.to(accelerator.device)).cpu()
            out[name] = list(gathered.reshape(accelerator.num_processes, -1))
        else:
            out[name] = [rng_state]
    return out
