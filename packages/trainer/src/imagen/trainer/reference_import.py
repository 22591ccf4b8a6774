"""imagen-pytorch trainer checkpoints in our checkpoint layout (see :mod:`imagen.trainer.state`).

:func:`checkpoint_from_reference` turns a :class:`~imagen.cascade.ReferenceCheckpoint`
into the same :class:`~imagen.trainer.checkpoints.Checkpoint` that :func:`load_checkpoint` returns
for one of our files, so ``ImagenTrainer.load`` restores both through one path and
``imagen convert`` writes it out as a safetensors checkpoint:

- ``model`` -> ``imagen.*``; each unet's EMA (``<i>.ema_model.*`` of the reference's EMA ModuleList)
  -> ``ema_imagen.*`` (the full cascade with EMA unet weights), ``<i>.step`` / ``<i>.initted`` -> the
  EMA counters;
- ``steps`` -> per-unet step counters;
- ``optim<i>`` -> our optimizer state: the reference's Adam indexes its state by position in
  ``unet.parameters()``, i.e. the order of the parameters among the state dict's keys; each entry is
  moved to the position of the parameter of the same name in our optimizer;
- the LR schedule: the reference steps ``CosineAnnealingLR`` under pytorch-warmup's linear
  dampening, which equals our ``WarmupCosine`` factor; our scheduler resumes at the reference's step
  count with its current learning rate and initial learning rate;
- ``scaler<i>`` -> the grad scaler state (empty unless fp16).

Nothing of the file is unpickled beyond ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json

import torch

from imagen.cascade import ReferenceCheckpoint, ReferenceCheckpointError, weights_misfit

from .checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_VERSION, Checkpoint
from .optim import optimizer_state_to_tensors
from .state import unet_prefixes

__all__ = ["REFERENCE_SOURCE", "checkpoint_from_reference"]

REFERENCE_SOURCE = "imagen-pytorch"
"""``metadata["source"]`` of a checkpoint converted in memory from a reference file."""


def _parameter_order(weights: dict, prefix: str, parameter_names: set[str]) -> list[str]:
    """The names of a unet's parameters in ``unet.parameters()`` order: the state dict lists each
    module's parameters then its buffers, module by module in the same order as ``parameters()``."""
    return [key[len(prefix):] for key in weights if key.startswith(prefix) and key[len(prefix):] in parameter_names]


def _optimizer_document(saved: dict, unet, reference_names: list[str], name: str, index: int):
    """Our ``optimizer.state_dict()`` for ``unet`` from the reference's, matched by parameter name."""
    ours = [n for n, p in unet.named_parameters() if p.requires_grad]
    position = {n: i for i, n in enumerate(ours)}
    groups = saved.get("param_groups") or []
    if len(groups) != 1:
        raise ReferenceCheckpointError(
            f"{name}: optim{index} has {len(groups)} parameter groups; the reference trainer's Adam has one")
    state = {}
    for ref_index, values in saved.get("state", {}).items():
        ref_index = int(ref_index)
        if ref_index >= len(reference_names) or reference_names[ref_index] not in position:
            raise ReferenceCheckpointError(
                f"{name}: optim{index} holds state for parameter #{ref_index}, which unet {index + 1} does not have")
        state[position[reference_names[ref_index]]] = dict(values)
    group = {k: (tuple(v) if k == "betas" else v) for k, v in groups[0].items() if k != "params"}
    group["params"] = list(range(len(ours)))
    return {"state": state, "param_groups": [group]}


class _StateDictOnly:
    """Something with ``state_dict()``, for :func:`optimizer_state_to_tensors`."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


def _scheduler_state(group: dict, steps: int) -> dict:
    """Our ``LambdaLR`` state after ``steps`` optimizer steps at the reference's learning rates."""
    initial = float(group.get("initial_lr", group["lr"]))
    return {"base_lrs": [initial], "last_epoch": steps, "_step_count": steps + 1, "_is_initial": False,
            "_get_lr_called_within_step": False, "_last_lr": [float(group["lr"])], "lr_lambdas": [None]}


def checkpoint_from_reference(ref: ReferenceCheckpoint, imagen, config_json: str | None = None) -> Checkpoint:
    """The reference checkpoint ``ref`` as our :class:`Checkpoint` for the cascade ``imagen`` (whose
    parameter names give the optimizer's order). Raises ``ReferenceCheckpointError`` naming the
    keys when the weights do not fit the cascade."""
    weights = ref.cascade_weights()
    misfit = weights_misfit(imagen, weights)
    if misfit:
        raise ReferenceCheckpointError(f"the weights in {ref.name} do not fit this cascade ({misfit})")

    tensors = {f"imagen.{k}": v for k, v in weights.items()}
    prefixes = unet_prefixes(imagen)
    trainable = [i for i, unet in enumerate(imagen.unets) if not getattr(unet, "is_null", False)]
    steps = list(ref.steps or [0] * imagen.num_unets)
    state: dict = {"steps": steps, "nonfinite_steps": [0] * imagen.num_unets,
                   "consecutive_nonfinite": [0] * imagen.num_unets, "ema": {},
                   "optimizers": {}, "schedulers": {}, "scalers": {}, "data": {},
                   "reference": {"file": ref.name, "version": ref.version}}

    ema_unets, counters = ref.ema_unets(), ref.ema_counters()
    if any(i in ema_unets for i in trainable):
        ema_weights = dict(weights)
        for index in trainable:
            for key, value in ema_unets.get(index, {}).items():
                ema_weights[prefixes[index] + key] = value
            if index in counters:
                state["ema"][str(index)] = {"step": counters[index].get("step", 0),
                                            "initted": counters[index].get("initted", True)}
        tensors.update({f"ema_imagen.{k}": v for k, v in ema_weights.items()})

    for index in trainable:
        saved = ref.optimizers.get(index)
        if saved is None:
            continue
        unet = imagen.unets[index]
        names = {n for n, _ in unet.named_parameters()}
        order = _parameter_order(ref.model, prefixes[index], names)
        document = _optimizer_document(saved, unet, order, ref.name, index)
        opt_tensors, opt_json = optimizer_state_to_tensors(_StateDictOnly(document), f"optim.{index}.")
        tensors.update(opt_tensors)
        state["optimizers"][str(index)] = opt_json
        state["schedulers"][str(index)] = _scheduler_state(document["param_groups"][0], steps[index])
        state["scalers"][str(index)] = dict(ref.scalers.get(index) or {})
    if not state["optimizers"]:
        for key in ("optimizers", "schedulers", "scalers", "data"):
            del state[key]
    metadata = {"format": CHECKPOINT_FORMAT, "format_version": str(CHECKPOINT_FORMAT_VERSION),
                "trainer_state": json.dumps(state), "source": REFERENCE_SOURCE}
    if config_json is not None:
        metadata["imagen_config"] = config_json
    tensors = {k: v.detach().to("cpu") if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}
    return Checkpoint(tensors, metadata)
