"""``ImagenTrainer``: trains any stage of an Imagen cascade on one CPU, one GPU or N processes.

The facade: it validates options, builds one :class:`~imagen.trainer.stage.StageOptimization` per
trainable stage, chunks batches (:mod:`imagen.trainer.chunks`), feeds data streams
(:mod:`imagen.trainer.streams`), samples through the EMA (:mod:`imagen.trainer.sampling`) and
saves / loads its state (:mod:`imagen.trainer.state`, :mod:`imagen.trainer.checkpoints`). All
multi-process work goes through accelerate: the trained stage's U-Net and optimizer are prepared
(DistributedDataParallel with several processes) when the stage is first trained.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from ema_pytorch import EMA
from torch import nn

from imagen.cascade import (
    ReferenceCheckpointError,
    atomic_write,
    compile_options_of,
    is_torch_save,
    load_imagen_from_checkpoint,
    push_to_hub,
    read_reference_checkpoint,
)

from .checkpoint_folders import (
    FolderCheckpoint,
    is_checkpoint_folder,
    load_sharded_training,
    read_checkpoint_folder,
    save_checkpoint_folder,
)
from .checkpoints import (
    CheckpointError,
    check_layout,
    checkpoint_folder_files,
    folder_checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_partial_checkpoints,
    save_checkpoint,
)
from .chunks import concatenate_outputs, split_batch, split_sample_kwargs
from .data import _mix_seed
from .optim import make_optimizer, make_scheduler
from .placement import StagePlacement
from .reference_import import REFERENCE_SOURCE, checkpoint_from_reference
from .sampling import ema_weights, grid_picture
from .setup import (
    PRECISIONS,
    autocast,
    layer_randomness,
    make_accelerator,
    per_unet,
    register_teardown,
    training_precision,
)
from .shards import ShardDataset, loader_settings
from .stage import NonFiniteTrainingError, StageOptimization, any_process
from .state import gather_generator_states, pack_state, restore_generators, restore_training, restore_weights
from .storage import is_local, join, resolve
from .streams import DataStreams, LoaderStream, dataset_stream, split_validation
from .tracking import Progress, TrainingLog, check_trackers, log_image, quiet_other_processes

__all__ = ["ImagenTrainer", "NonFiniteTrainingError"]

logger = logging.getLogger(__name__)

_EMA_KEYS = {"ema_beta": "beta", "ema_update_after_step": "update_after_step", "ema_update_every": "update_every"}

_ADAM_KEYWORDS = frozenset(inspect.signature(torch.optim.Adam).parameters) - {"params", "lr", "betas", "eps"}
"""Keywords that go to ``torch.optim.Adam`` unchanged (``weight_decay``, ``amsgrad``, ``foreach``...)."""

SAMPLING_ONLY_SETTINGS = frozenset({
    "timesteps", "num_sample_steps", "sigma_min", "sigma_max", "rho", "S_churn", "S_tmin", "S_tmax", "S_noise",
    "dynamic_thresholding", "dynamic_thresholding_percentile", "lowres_sample_noise_level", "sampler",
    "only_train_unet_number",
})
"""Cascade settings that change neither the weights nor what a training step computes (how to
sample, and which unet a session trains): ``load`` accepts a checkpoint where only these differ,
and warns naming them. Any other difference (architecture, noise schedules, objectives, losses,
conditioning dropout, image sizes, text encoder...) is refused."""

_MISSING = object()


def _as_tensor(value):
    """A numpy array as a tensor (the reference's trainer accepts both); anything else unchanged."""
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


def _as_float_images(images, device=None):
    """Images as a float tensor: numpy arrays become tensors, uint8 values in [0, 255] become [0, 1]
    (moved to ``device`` first, when given, so that uint8 crosses to the device)."""
    images = _as_tensor(images)
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        if device is not None:
            images = images.to(device, non_blocking=True)
        return images.float() / 255
    return images


def config_differences(saved: dict, current: dict) -> list[str]:
    """The top-level settings whose values differ between two config dicts (sorted)."""
    return sorted(k for k in set(saved) | set(current) if saved.get(k, _MISSING) != current.get(k, _MISSING))


class ImagenTrainer(nn.Module):
    """Trains an ``imagen.cascade`` Imagen or ElucidatedImagen, one stage per call.

    ``trainer(images, texts=... | text_embeds=..., text_masks=, cond_images=, unet_number=,
    max_batch_size=)`` accumulates gradients and returns the loss; ``trainer.update(unet_number)``
    applies them. ``lr``, ``eps``, ``beta1``, ``beta2``, ``weight_decay``, ``max_grad_norm``,
    ``warmup_steps``, ``cosine_decay_max_steps`` and ``lr_scheduler`` may be tuples with one value per
    unet. The LR schedule is the reference's linear warm-up x cosine decay (``lr_scheduler=None``) or a
    ``transformers.get_scheduler`` name (``"linear"``, ``"cosine"``, ``"constant_with_warmup"``... see
    :data:`~imagen.trainer.optim.LR_SCHEDULERS`) with ``warmup_steps`` warm-up steps over
    ``cosine_decay_max_steps`` steps in all, and ``lr_scheduler_kwargs`` for its own options.
    ``precision`` is ``"no"``, ``"bf16"`` or ``"fp16"`` (with loss scaling); ``fp16=True`` means
    ``"fp16"``; None adopts the accelerator's mixed precision. ``ema_beta``,
    ``ema_update_after_step``, ``ema_update_every`` (and any other ``ema_<name>`` keyword of
    ``ema_pytorch.EMA``) configure the EMA; ``accelerate_<name>`` keywords go to
    ``accelerate.Accelerator``. With ``checkpoint_path`` the trainer resumes from the newest
    checkpoint there and writes one every ``checkpoint_every`` steps, keeping ``max_checkpoints_keep``;
    ``checkpoint_layout="folder"`` (the default under FSDP2) writes per-stage checkpoint folders, each
    process its part (:mod:`imagen.trainer.checkpoint_folders`), ``"file"`` one safetensors file.
    ``max_consecutive_nonfinite`` bad steps in a row raise :class:`NonFiniteTrainingError`.

    Tracking: ``log_with`` (``"tensorboard"``, ``"wandb"``, a list, or accelerate trackers) with
    ``project_dir`` (where file-based trackers write) starts accelerate's trackers with the run config
    as hyper-parameters (the cascade config, the trainer's options and ``run_config``, flattened); every
    ``log_every`` steps of a stage its loss (averaged over processes), learning rate, gradient norm,
    images/s and non-finite step count are logged (:mod:`imagen.trainer.tracking`). A tracker that is
    not installed is refused here, before anything trains.

    As the reference: other keywords (``weight_decay``, ``amsgrad``, ``foreach``, ``fused``,
    ``decoupled_weight_decay``...) go to each unet's ``torch.optim.Adam``; ``group_wd_params`` is
    accepted and has no effect (the reference does not use it); ``checkpoint_path`` may be any fsspec
    URL, with ``fs_kwargs`` for its filesystem, or a path on the fsspec filesystem ``checkpoint_fs``;
    ``max_checkpoints_keep <= 0`` keeps every checkpoint.

    Speed and memory (beyond the reference; :mod:`imagen.trainer.placement`): ``compile=True`` (or a
    dict of ``torch.compile`` keywords, e.g. ``{"backend": "aot_eager"}``) trains each stage through
    ``torch.compile`` of its prepared U-Net, compiled at the stage's first step and kept (the saved
    weights are the U-Net's own: no ``_orig_mod.`` keys). ``use_one_unet_in_gpu=True`` keeps only the
    stage that trains (or samples) on the accelerator, with its Adam state and EMA copy, and every
    other stage on the CPU (the reference trainer's ``get_unet``); ``ema_device="cpu"`` keeps every EMA
    copy on the CPU (its update copies the online weights over).
    """

    def __init__(
        self,
        imagen=None,
        imagen_checkpoint_path=None,
        use_ema=True,
        lr=1e-4,
        eps=1e-8,
        beta1=0.9,
        beta2=0.99,
        max_grad_norm=None,
        group_wd_params=True,
        warmup_steps=None,
        cosine_decay_max_steps=None,
        only_train_unet_number=None,
        fp16=False,
        precision=None,
        split_batches=True,
        dl_tuple_output_keywords_names=("images", "text_embeds", "text_masks", "cond_images"),
        verbose=True,
        split_valid_fraction=0.025,
        split_valid_from_train=False,
        split_random_seed=42,
        checkpoint_path=None,
        checkpoint_every=None,
        checkpoint_fs=None,
        fs_kwargs: dict | None = None,
        max_checkpoints_keep=20,
        *,
        weight_decay=0.0,
        seed=0,
        max_consecutive_nonfinite=10,
        accelerator=None,
        log_with=None,
        project_dir=None,
        log_every: int = 10,
        run_config: dict | None = None,
        lr_scheduler: str | None = None,
        lr_scheduler_kwargs: dict | None = None,
        checkpoint_layout: str | None = None,
        compile: bool | dict = False,
        use_one_unet_in_gpu: bool = False,
        ema_device=None,
        **kwargs,
    ):
        super().__init__()
        if (imagen is None) == (imagen_checkpoint_path is None):
            raise ValueError("give exactly one of imagen and imagen_checkpoint_path")
        if imagen is None:
            imagen = load_imagen_from_checkpoint(imagen_checkpoint_path)
        if isinstance(max_checkpoints_keep, bool) or not isinstance(max_checkpoints_keep, int):
            raise ValueError(f"max_checkpoints_keep must be an int (<= 0 keeps all), got {max_checkpoints_keep!r}")
        if fp16 and precision not in (None, "fp16"):
            raise ValueError(f"fp16=True conflicts with precision={precision!r}")
        precision = "fp16" if fp16 else precision
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of 'no', 'bf16', 'fp16' (or None), got {precision!r}")
        if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be None or an int >= 1, got {checkpoint_every!r}")
        if checkpoint_every is not None and checkpoint_path is None:
            raise ValueError("checkpoint_every needs checkpoint_path (the folder to write checkpoints to)")
        if not 0 <= split_valid_fraction <= 1 or (split_valid_from_train and split_valid_fraction in (0, 1)):
            accepted = "(0, 1) with split_valid_from_train" if split_valid_from_train else "[0, 1]"
            raise ValueError(f"split_valid_fraction must lie in {accepted}, got {split_valid_fraction!r}")

        ema_kwargs = {_EMA_KEYS.get(k, k[4:]): kwargs.pop(k) for k in list(kwargs) if k.startswith("ema_")}
        accelerate_kwargs = {k[11:]: kwargs.pop(k) for k in list(kwargs) if k.startswith("accelerate_")}
        optimizer_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _ADAM_KEYWORDS}
        if kwargs:
            raise TypeError(
                f"ImagenTrainer got unexpected keyword arguments {sorted(kwargs)}; besides its own it accepts "
                f"ema_<name>, accelerate_<name> and torch.optim.Adam's {sorted(_ADAM_KEYWORDS)}"
            )
        if fs_kwargs is not None and not isinstance(fs_kwargs, dict):
            raise TypeError(f"fs_kwargs must be a dict of fsspec filesystem options, got {type(fs_kwargs).__name__}")
        self.fs_kwargs = dict(fs_kwargs or {})
        self.fs, self.checkpoint_path = resolve(
            checkpoint_path if checkpoint_path is not None else ".", checkpoint_fs, self.fs_kwargs
        )
        if checkpoint_path is None:
            self.checkpoint_path = None
        if accelerator is not None and (log_with is not None or project_dir is not None):
            raise ValueError("log_with / project_dir conflict with accelerator=: build that Accelerator with log_with "
                             "and project_dir instead (the trainer logs to its trackers)")
        if log_with is not None:
            accelerate_kwargs.setdefault("log_with", check_trackers(log_with, project_dir))
        if project_dir is not None:
            accelerate_kwargs.setdefault("project_dir", str(project_dir))
        self.accelerator = accelerator if accelerator is not None else make_accelerator(accelerate_kwargs)
        quiet_other_processes(self.accelerator)
        precision = training_precision(self.accelerator, precision)
        register_teardown(self.accelerator)
        self.compile_options = compile_options_of(compile)
        """The ``torch.compile`` keywords of each trained U-Net (None: eager)."""
        if not isinstance(use_one_unet_in_gpu, bool):
            raise TypeError(f"use_one_unet_in_gpu must be a bool, got {use_one_unet_in_gpu!r}")
        self.placement = StagePlacement(self.device, one_unet_on_device=use_one_unet_in_gpu, ema_device=ema_device)
        """Where stages and EMA copies live (:class:`~imagen.trainer.placement.StagePlacement`)."""
        if self.placement.ema_device is not None:
            ema_kwargs.setdefault("allow_different_devices", True)  # EMA updates copy the online weights over
        self.placement.place_cascade(imagen)
        self.imagen = imagen
        self._compiled_unets: dict[int, nn.Module] = {}  # a plain dict: no submodule, state dicts unchanged
        self.only_train_unet_number = only_train_unet_number or imagen.only_train_unet_number
        if self.only_train_unet_number is not None:
            imagen.get_unet(self.only_train_unet_number)  # validates the number
        self.use_ema, self.verbose, self.split_batches = use_ema, verbose, split_batches
        self.split_valid_fraction, self.split_valid_from_train = split_valid_fraction, split_valid_from_train
        self.split_random_seed, self.seed = split_random_seed, seed
        self.precision, self.max_consecutive_nonfinite = precision, max_consecutive_nonfinite
        self.checkpoint_every, self.max_checkpoints_keep = checkpoint_every, max_checkpoints_keep
        self.checkpoint_layout = check_layout(checkpoint_layout, self.fs, self.accelerator)
        """``"file"`` (one safetensors file; the default) or ``"folder"`` (per-stage files, sharded training
        state; the default under FSDP2)."""

        options = dict(
            lr=lr, eps=eps, beta1=beta1, beta2=beta2, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
            warmup_steps=warmup_steps, cosine_decay_max_steps=cosine_decay_max_steps, lr_scheduler=lr_scheduler,
        )
        self.lr_scheduler_kwargs = dict(lr_scheduler_kwargs or {})
        per = {name: per_unet(value, imagen.num_unets, name) for name, value in options.items()}
        self.tracking = TrainingLog(self.accelerator, log_every, enabled=bool(self.accelerator.log_with),
                                    owns_trackers=accelerator is None)
        """The tracker log of every stage's training metrics (:class:`~imagen.trainer.tracking.TrainingLog`)."""
        if self.tracking.owns_trackers and self.tracking.enabled:
            trainer_options = dict(options, precision=precision, seed=seed, use_ema=use_ema,
                                   split_batches=split_batches, num_processes=self.accelerator.num_processes,
                                   ema=ema_kwargs, adam=optimizer_kwargs)
            self.tracking.start({"imagen": json.loads(imagen.config.to_json()), "trainer": trainer_options,
                                 **(run_config or {})})
        self.emas = nn.ModuleDict()
        self.stages: dict[int, StageOptimization] = {}
        """The optimisation state of each trainable stage, by 0-based index (NullUnet stages have none)."""
        for i, unet in enumerate(imagen.unets):
            if not getattr(unet, "is_null", False):
                self.stages[i] = self._stage_optimization(i, unet, {k: v[i] for k, v in per.items()},
                                                          optimizer_kwargs, ema_kwargs)

        process_seed = _mix_seed(seed, self.accelerator.process_index)
        self._generator = torch.Generator(self.device).manual_seed(process_seed)
        self._valid_generator = torch.Generator(self.device).manual_seed(_mix_seed(process_seed, 1))
        self._generators = {"train": self._generator, "valid": self._valid_generator,
                            "layers": torch.Generator().manual_seed(_mix_seed(process_seed, 2))}  # nn.Dropout's
        self.data = DataStreams(dl_tuple_output_keywords_names)
        """The train / valid batch streams (:class:`~imagen.trainer.streams.DataStreams`)."""
        if self.checkpoint_path is not None:
            self.load_from_checkpoint_folder()

    def _stage_optimization(self, index, unet, options, optimizer_kwargs, ema_kwargs) -> StageOptimization:
        optimizer = make_optimizer(
            unet, lr=options["lr"], eps=options["eps"], betas=(options["beta1"], options["beta2"]),
            weight_decay=options["weight_decay"], **optimizer_kwargs,
        )
        scheduler = make_scheduler(optimizer, options["lr_scheduler"], warmup_steps=options["warmup_steps"],
                                   decay_steps=options["cosine_decay_max_steps"],
                                   scheduler_kwargs=self.lr_scheduler_kwargs)
        scaler = self.accelerator.scaler  # accelerate's fp16 scaler (GPU) when it has one, else ours
        if scaler is None:
            scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if self.use_ema:
            self.emas[str(index)] = EMA(unet, include_online_model=False, **ema_kwargs)
            self.placement.place_ema(self.emas[str(index)], index)
        return StageOptimization(
            index, unet, optimizer, scheduler, scaler,
            ema=self.emas[str(index)] if self.use_ema else None, max_grad_norm=options["max_grad_norm"],
        )

    # ------------------------------------------------------------------------------ properties

    @property
    def device(self) -> torch.device:
        """The device of this process (``accelerator.device``)."""
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        """Whether this is the main process (the only one that writes files)."""
        return self.accelerator.is_main_process

    @property
    def is_local_main(self) -> bool:
        """Whether this is the main process of its machine."""
        return self.accelerator.is_local_main_process

    @property
    def num_unets(self) -> int:
        """Number of stages of the cascade."""
        return self.imagen.num_unets

    @property
    def optimizers(self) -> dict[int, torch.optim.Optimizer]:
        """Each trainable stage's (unprepared) optimizer, by 0-based index."""
        return {i: stage.optimizer for i, stage in self.stages.items()}

    @property
    def schedulers(self) -> dict:
        """Each trainable stage's LR scheduler, by 0-based index."""
        return {i: stage.scheduler for i, stage in self.stages.items()}

    @property
    def scalers(self) -> dict:
        """Each trainable stage's gradient scaler, by 0-based index (disabled unless fp16)."""
        return {i: stage.scaler for i, stage in self.stages.items()}

    @property
    def dl_tuple_output_keywords_names(self) -> tuple[str, ...]:
        """The keywords that name the items of a dataloader's tuple batches."""
        return self.data.keyword_names

    def _per_stage(self, name: str) -> list[int]:
        return [getattr(self.stages[i], name) if i in self.stages else 0 for i in range(self.num_unets)]

    @property
    def steps(self) -> torch.Tensor:
        """Optimizer steps taken per unet, a (num_unets,) long tensor."""
        return torch.tensor(self._per_stage("steps"), dtype=torch.long)

    @property
    def nonfinite_steps(self) -> list[int]:
        """Steps skipped for a non-finite loss or gradient, per unet (1-based unet i at index i - 1)."""
        return self._per_stage("nonfinite_steps")

    def num_steps_taken(self, unet_number: int | None = None) -> int:
        """Steps taken by one unet, or by all together when ``unet_number`` is None."""
        if unet_number is None:
            return sum(self._per_stage("steps"))
        self._check_unet_number(unet_number)
        return self._per_stage("steps")[unet_number - 1]

    def _check_unet_number(self, unet_number) -> None:
        if isinstance(unet_number, bool) or not isinstance(unet_number, int) or not 1 <= unet_number <= self.num_unets:
            raise ValueError(f"unet_number must be an int in [1, {self.num_unets}], got {unet_number!r}")

    def _resolve_unet_number(self, unet_number: int | None) -> int:
        if unet_number is None:
            if self.only_train_unet_number is not None:
                return self.only_train_unet_number
            if self.num_unets == 1:
                return 1
            raise ValueError(f"unet_number must be given for a cascade of {self.num_unets} unets")
        self._check_unet_number(unet_number)
        if self.only_train_unet_number is not None and unet_number != self.only_train_unet_number:
            raise ValueError(
                f"this trainer only trains unet {self.only_train_unet_number} (only_train_unet_number), "
                f"got unet_number={unet_number}"
            )
        if (unet_number - 1) not in self.stages:
            raise ValueError(f"unet {unet_number} is a NullUnet placeholder and cannot be trained")
        return unet_number

    def _stage(self, unet_number: int | None) -> StageOptimization:
        return self.stages[self._resolve_unet_number(unet_number) - 1]

    # ------------------------------------------------------------------ the reference's helpers

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process trains (or accelerate runs distributed)."""
        return self.accelerator.num_processes > 1 or self.accelerator.distributed_type.value != "NO"

    def get_lr(self, unet_number: int | None = None) -> float:
        """The current learning rate of a unet's optimizer."""
        return self._stage(unet_number).optimizer.param_groups[0]["lr"]

    def get_ema_unet(self, unet_number: int | None = None):
        """The EMA copy of a unet (None without EMA)."""
        stage = self._stage(unet_number)
        return stage.ema.ema_model if stage.ema is not None else None

    @property
    def unets(self) -> nn.ModuleList:
        """The EMA copies of the trained unets (as the reference's ``trainer.unets``)."""
        return nn.ModuleList([stage.ema.ema_model for stage in self.stages.values() if stage.ema is not None])

    def encode_text(self, text, return_attn_mask: bool = False, **kwargs):
        """The texts' embeddings (B, L, D) from the cascade's text encoder, with the (B, L) mask too
        when ``return_attn_mask`` (the reference's ``imagen.encode_text``)."""
        if hasattr(self.imagen, "encode_text"):
            return self.imagen.encode_text(text, return_attn_mask=return_attn_mask, **kwargs)
        embeds, masks = self.imagen.text_encoder.encode([text] if isinstance(text, str) else list(text), **kwargs)
        return (embeds, masks) if return_attn_mask else embeds

    def print_untrained_unets(self) -> list[int]:
        """Logs, and returns, the numbers of the unets that have taken no step (NullUnets aside)."""
        untrained = [i + 1 for i in self.stages if self.stages[i].steps == 0]
        for number in untrained:
            logger.warning("unet %d has not been trained (pass stop_at_unet_number to sample before it)", number)
        return untrained

    @property
    def all_checkpoints_sorted(self) -> list:
        """The checkpoints in ``checkpoint_path``, newest (most steps) first (the reference's order)."""
        if self.checkpoint_path is None:
            return []
        return checkpoint_folder_files(self.checkpoint_path, self.fs, include_reference=True)[::-1]

    def load_from_checkpoint_folder(self, last_total_steps: int = -1):
        """Loads the newest checkpoint of ``checkpoint_path``, or the one written after
        ``last_total_steps`` steps; returns its state (None when the folder holds none)."""
        if self.checkpoint_path is None:
            raise ValueError("load_from_checkpoint_folder needs checkpoint_path")
        if last_total_steps != -1:
            name = folder_checkpoint_name(last_total_steps, self.checkpoint_layout)
            return self.load(join(self.checkpoint_path, name))
        if self.is_main:
            remove_partial_checkpoints(self.checkpoint_path, self.fs)  # left by a save that was killed
        newest = latest_checkpoint(self.checkpoint_path, self.fs, include_reference=True)
        if newest is None:
            logger.info("no checkpoint in %s to load", self.checkpoint_path)
            return None
        return self.load(newest)

    # ------------------------------------------------------------------------------- training

    def _activate(self, stage) -> None:
        """With ``use_one_unet_in_gpu``: ``stage`` becomes the one stage on the device."""
        self.placement.activate(self.imagen.unets, self.stages, stage.index)

    def _training_unet(self, stage) -> nn.Module:
        """The module a training forward calls: the prepared U-Net, compiled once per stage with
        ``compile`` (kept for later steps; the cascade's own U-Net, whose weights are saved, is unchanged)."""
        model = stage.prepare(self.accelerator)
        if self.compile_options is None:
            return model
        if stage.index not in self._compiled_unets:
            self._compiled_unets[stage.index] = torch.compile(model, **self.compile_options)
        return self._compiled_unets[stage.index]

    def _loss(self, stage, images, max_batch_size, kwargs, *, train: bool, generator) -> float:
        """The batch's loss, chunked; with ``train`` each chunk is back-propagated through the
        prepared U-Net, and gradients are all-reduced on the last chunk only."""
        chunks = list(split_batch(images, kwargs, max_batch_size))
        self._activate(stage)
        model = self._training_unet(stage) if train else None
        total = torch.zeros((), device=self.device)
        layers = layer_randomness(self._generators["layers"], self.device) if train else contextlib.nullcontext()
        with layers:  # nn.Dropout draws from the global RNG: seed it from a saved generator
            for i, (fraction, chunk_images, chunk_kwargs) in enumerate(chunks):
                with stage.no_sync(self.accelerator, sync=i == len(chunks) - 1) if train else contextlib.nullcontext():
                    with autocast(self.device, self.precision):
                        loss = self.imagen(
                            chunk_images, unet_number=stage.unet_number, generator=generator, unet=model, **chunk_kwargs
                        )
                    loss = loss.float() * fraction
                    if train:
                        stage.backward(self.accelerator, loss)
                total += loss.detach()
        return total.item()

    def forward(self, images=None, *, unet_number: int | None = None, max_batch_size: int | None = None, **kwargs):
        """Accumulates the gradients of stage ``unet_number``'s loss on ``images`` (B, C, H, W) (or
        videos (B, C, F, H, W)) in chunks of ``max_batch_size``, and returns the loss (a float).
        As in the reference, numpy arrays become tensors and uint8 images (and ``cond_images``) are
        divided by 255.
        Other keywords (``texts``, ``text_embeds``, ``text_masks``, ``cond_images``, ...) go to the
        cascade; those with the batch as first dimension are chunked with the images."""
        if images is None:
            images = kwargs.pop("images", None)
        images = _as_float_images(images, self.device)
        kwargs = {k: _as_float_images(v, self.device) if k == "cond_images" else _as_tensor(v)
                  for k, v in kwargs.items()}
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor (B, C, H, W) or (B, C, F, H, W), got {type(images).__name__}")
        stage = self._stage(unet_number)
        stage.unet.train()
        return self._loss(stage, images, max_batch_size, kwargs, train=True, generator=self._generator)

    def update(self, unet_number: int | None = None) -> bool:
        """Applies the accumulated gradients of one stage: skip the step if the loss or gradient is
        not finite on any process, else clip, step the optimizer, LR schedule and EMA. Returns
        whether the step was taken. Writes a checkpoint every ``checkpoint_every`` steps."""
        stage = self._stage(unet_number)
        self._activate(stage)
        taken = stage.step(self.accelerator, self.max_consecutive_nonfinite)
        if taken and self.checkpoint_every is not None and self.num_steps_taken() % self.checkpoint_every == 0:
            self.save_to_checkpoint_folder()
        return taken

    # ------------------------------------------------------------------------------------ data

    def _dataset_stream(self, dataset, batch_size, seed_salt: int, **dl_kwargs):
        return dataset_stream(
            dataset, batch_size, self.accelerator, split_batches=self.split_batches,
            seed=_mix_seed(self.seed, seed_salt), **dl_kwargs,
        )

    def add_train_dataset(self, ds=None, *, batch_size, num_workers: int = 0, pin_memory: bool = False,
                          persistent_workers: bool = False, prefetch_factor: int | None = None, **dl_kwargs) -> None:
        """Train on ``ds`` (a map-style dataset, or a :class:`~imagen.trainer.ShardDataset` of tar
        shards) in batches of ``batch_size`` (the global batch when ``split_batches``, else per
        process). With ``split_valid_from_train`` a random ``split_valid_fraction`` of it becomes the
        validation set (map-style datasets and :class:`~imagen.trainer.HFDataset` only).
        ``num_workers`` loader processes decode the batches, with ``pin_memory``,
        ``persistent_workers`` and ``prefetch_factor`` (batches each worker prepares ahead) as in
        ``torch.utils.data.DataLoader``; other keywords go to it too."""
        if ds is None:
            raise ValueError("add_train_dataset needs a dataset")
        if "train" in self.data:
            raise ValueError("a training dataset or dataloader was already added")
        dl_kwargs.update(loader_settings(num_workers, pin_memory, persistent_workers, prefetch_factor))
        if self.split_valid_from_train:
            n = len(ds)
            if isinstance(ds, ShardDataset):  # an HFDataset splits off rows; tar shards refuse
                ds, valid = ds.split_validation(self.split_valid_fraction, self.split_random_seed)
            else:
                ds, valid = split_validation(ds, self.split_valid_fraction, self.split_random_seed)
            most = len(valid) * self.accelerator.num_processes if self.split_batches else len(valid)
            self.data.add("valid", self._dataset_stream(valid, min(batch_size, most), 3, **dict(dl_kwargs)))
            logger.info("split %d validation items off %d training items", len(valid), n)
        self.data.add("train", self._dataset_stream(ds, batch_size, 2, **dl_kwargs))

    def add_valid_dataset(self, ds=None, *, batch_size, **dl_kwargs) -> None:
        """Validate on ``ds`` in batches of ``batch_size``."""
        if ds is None:
            raise ValueError("add_valid_dataset needs a dataset")
        if "valid" in self.data:
            raise ValueError("a validation dataset or dataloader was already added")
        self.data.add("valid", self._dataset_stream(ds, batch_size, 3, **dl_kwargs))

    def add_train_dataloader(self, dl=None, *, prepare: bool = True) -> None:
        """Train on the batches of a user's DataLoader, prepared by accelerate across processes
        unless ``prepare=False`` (a loader that already gives each process its own share)."""
        if dl is None or "train" in self.data:
            raise ValueError("add_train_dataloader needs a dataloader, and only one")
        self.data.add("train", LoaderStream(dl, self.accelerator, prepare=prepare))

    def add_valid_dataloader(self, dl=None, *, prepare: bool = True) -> None:
        """Validate on the batches of a user's DataLoader (``prepare`` as in :meth:`add_train_dataloader`)."""
        if dl is None or "valid" in self.data:
            raise ValueError("add_valid_dataloader needs a dataloader, and only one")
        self.data.add("valid", LoaderStream(dl, self.accelerator, prepare=prepare))

    def train_step(self, unet_number: int | None = None, **kwargs) -> float:
        """One step on the next training batch: loss (chunked by ``max_batch_size``) and update."""
        unet_number = self._resolve_unet_number(unet_number)
        began = time.perf_counter()
        batch = self.data.next_kwargs("train")
        loss = self(**batch, unet_number=unet_number, **kwargs)
        taken = self.update(unet_number)
        stage = self.stages[unet_number - 1]
        self.tracking.record(stage, loss, images=len(batch["images"]), seconds=time.perf_counter() - began,
                             taken=taken)
        self.tracking.log_due(stage)  # every log_every steps of the stage (a collective: all ranks call it)
        return loss

    @torch.no_grad()
    def valid_step(self, unet_number: int | None = None, use_ema_unets: bool = False, **kwargs) -> float:
        """The loss on the next validation batch (no gradients), through the EMA weights if asked."""
        stage = self._stage(unet_number)
        batch = {**self.data.next_kwargs("valid"), **kwargs}
        max_batch_size = batch.pop("max_batch_size", None)
        images = _as_float_images(batch.pop("images"), self.device)
        with self.use_ema_unets() if use_ema_unets else contextlib.nullcontext():
            return self._loss(stage, images, max_batch_size, batch, train=False, generator=self._valid_generator)

    # -------------------------------------------------------------------------------- sampling

    @contextlib.contextmanager
    def use_ema_unets(self):
        """Within the block the cascade's unets hold their EMA weights (restored on exit)."""
        emas = {i: stage.ema for i, stage in self.stages.items() if stage.ema is not None}
        with ema_weights(self.imagen.unets, emas):
            yield self.imagen

    @torch.no_grad()
    def sample(self, *args, use_ema: bool | None = None, use_non_ema: bool = False, max_batch_size: int | None = None,
               **kwargs):
        """``imagen.sample(...)`` through the EMA weights (unless ``use_non_ema=True`` as in the reference,
        ``use_ema=False``, or the trainer keeps no EMA); progress bars follow ``verbose`` unless
        ``use_tqdm`` is given. With ``max_batch_size`` the batch is sampled in chunks of at most that
        many (``texts``, ``text_embeds``, ``cond_images``... split with it, or ``batch_size`` for an
        unconditional cascade) and the outputs concatenated."""
        kwargs.setdefault("use_tqdm", self.verbose and self.is_main)
        if use_non_ema:
            if use_ema:
                raise ValueError("use_non_ema=True conflicts with use_ema=True")
            use_ema = False
        use_ema = self.use_ema if use_ema is None else use_ema
        was_training = self.imagen.training
        self.imagen.eval()
        every_unet = kwargs.get("use_one_unet_in_gpu", True) is False
        try:
            with (self.placement.all_on_device(self.imagen.unets, self.stages) if every_unet
                  else contextlib.nullcontext()), self.use_ema_unets() if use_ema else contextlib.nullcontext():
                if max_batch_size is None:
                    return self.imagen.sample(*args, **kwargs)
                chunks = split_sample_kwargs(kwargs, max_batch_size)
                return concatenate_outputs([self.imagen.sample(*args, **chunk) for chunk in chunks])
        finally:
            self.imagen.train(was_training)

    def sample_grid(self, *, prompts=None, columns: int | None = None, **sample_kwargs):
        """Samples (through the EMA weights) and returns the images as one PIL grid, each ``prompts``
        text written under its image (:func:`~imagen.trainer.sampling.grid_picture`); a video's cell
        holds its frames side by side. ``prompts`` are the texts to sample; without them give
        ``batch_size`` (or embeddings) in ``sample_kwargs``."""
        if prompts is not None:
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"sample prompts must be a non-empty list of strings, got {prompts!r}")
            sample_kwargs = {"texts": prompts, **sample_kwargs}
        images = self.sample(**sample_kwargs)
        if images.ndim == 5:  # videos (B, C, F, H, W): each cell shows the frames side by side
            b, c, f, h, w = images.shape
            images = images.permute(0, 1, 3, 2, 4).reshape(b, c, h, f * w)
        return grid_picture(images, columns=columns, captions=prompts)

    def save_sample_grid(self, path, *, prompts=None, columns: int | None = None, **sample_kwargs) -> Path | None:
        """Samples (through the EMA weights) and writes the images as one PNG grid, atomically (main
        process only; the others return None). ``prompts`` are sampled and written under their cells."""
        if not self.is_main:
            return None
        picture = self.sample_grid(prompts=prompts, columns=columns, **sample_kwargs)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: picture.save(p, format="PNG"))
        return path

    def push_to_hub(self, repo_id: str, *, use_ema: bool | None = None, sample_prompts=None,
                    sample_kwargs: dict | None = None, **hub_kwargs):
        """Uploads the cascade (through the EMA weights unless ``use_ema=False``) to the Hub repo
        ``repo_id`` with a model card: its config, the steps of each unet and, with ``sample_prompts``
        (or ``sample_kwargs``), a grid sampled now with the noise seeded by ``seed``
        (:func:`imagen.cascade.push_to_hub`; ``token``, ``private``, ``revision``... go to it). Main
        process only (the others return None)."""
        if not self.is_main:
            return None
        use_ema = self.use_ema if use_ema is None else use_ema
        with tempfile.TemporaryDirectory(prefix="imagen-card-") as scratch:
            grid = None
            if sample_prompts is not None or sample_kwargs is not None:
                options = {"generator": self.seed, "use_ema": use_ema, **(sample_kwargs or {})}
                grid = self.save_sample_grid(Path(scratch) / "samples.png", prompts=sample_prompts, **options)
            with self.use_ema_unets() if use_ema else contextlib.nullcontext():
                return push_to_hub(self.imagen, repo_id, training_steps=self.steps.tolist(), sample_grid=grid,
                                   sample_prompts=sample_prompts, **hub_kwargs)

    def end_training(self) -> None:
        """Flushes and closes the trackers (what ``accelerator.end_training`` does for them; a later log
        opens them again). The process group is left up, since the trainer may still save; it is torn
        down at exit. :meth:`fit` calls this when it ends."""
        self.tracking.finish()

    def fit(
        self,
        num_steps: int | None = None,
        unet_number: int | None = None,
        *,
        seconds: float | None = None,
        max_batch_size: int | None = None,
        validate_every: int | None = None,
        valid_every: int | None = None,
        valid_batches: int = 1,
        sample_every: int | None = None,
        sample_folder=None,
        sample_prompts=None,
        sample_kwargs: dict | None = None,
        step_fn=None,
        end_training: bool = True,
    ) -> list[float]:
        """Trains stage ``unet_number`` for ``num_steps`` steps, or for ``seconds`` seconds (a time
        budget, the bar's total), with a progress bar (main process, ``verbose``) and returns the
        training losses of this process.

        Every ``validate_every`` steps (``valid_every`` is the same) the loss of ``valid_batches``
        validation batches (``add_valid_dataset`` or ``split_valid_from_train``), averaged over
        processes, is shown and logged as ``valid/loss/unet<n>``. Every ``sample_every`` steps the
        main process samples ``sample_prompts`` (or ``sample_kwargs``, e.g. ``batch_size`` for an
        unconditional cascade; the noise is seeded with ``seed`` so grids are comparable) through
        the EMA weights and logs the grid, each prompt under its image, as the image
        ``samples/unet<n>`` and/or writes it to ``sample_folder/sample-unet<n>-<step>.png``.
        ``step_fn(trainer, unet_number, max_batch_size=...) -> loss`` replaces :meth:`train_step`.
        Ends with :meth:`end_training` unless ``end_training=False``."""
        if (num_steps is None) == (seconds is None):
            raise ValueError(f"fit needs exactly one of num_steps and seconds (a time budget), got "
                             f"num_steps={num_steps!r}, seconds={seconds!r}")
        unet_number = self._resolve_unet_number(unet_number)
        stage = self.stages[unet_number - 1]
        if valid_every is not None and validate_every is not None and valid_every != validate_every:
            raise ValueError(f"validate_every={validate_every!r} and valid_every={valid_every!r} are one setting")
        validate_every = validate_every if validate_every is not None else valid_every
        for name, value in (("validate_every", validate_every), ("sample_every", sample_every),
                            ("valid_batches", valid_batches)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        if validate_every and "valid" not in self.data:
            raise ValueError("validate_every needs validation data: add_valid_dataset(...), add_valid_dataloader(...) "
                             "or split_valid_from_train=True")
        if sample_every and sample_folder is None and not self.tracking.enabled:
            raise ValueError("sample_every needs sample_folder or a tracker (log_with) to send the grids to")
        step_fn = step_fn or type(self).train_step
        sample_options = {"stop_at_unet_number": unet_number, "generator": self.seed, **(sample_kwargs or {})}
        if sample_prompts is None and not {"texts", "text_embeds", "batch_size"} & set(sample_options):
            sample_options["batch_size"] = 4
        show = self.verbose and self.is_main
        progress = Progress(steps=num_steps, seconds=seconds, desc=f"unet {unet_number}", show=show)
        losses = []
        try:
            while not self._budget_spent(progress):
                losses.append(step_fn(self, unet_number, max_batch_size=max_batch_size))
                step = stage.steps
                postfix = {"loss": f"{losses[-1]:.4f}"}
                if validate_every and step % validate_every == 0:
                    postfix["valid"] = f"{self._validate(stage, valid_batches, max_batch_size):.4f}"
                if sample_every and step % sample_every == 0:
                    self._log_samples(stage, sample_folder, sample_prompts, sample_options)
                progress.advance(**postfix)
        finally:
            progress.close()
        if end_training:
            self.end_training()
        return losses

    def _budget_spent(self, progress: Progress) -> bool:
        """Whether to stop; a time budget is decided by every process together (one all-reduce per step
        with several processes), so that no rank trains on alone."""
        if progress.seconds is None:
            return progress.done
        return any_process(self.accelerator, progress.done)

    def _validate(self, stage, batches: int, max_batch_size) -> float:
        """The mean loss of ``batches`` validation batches, averaged over processes; logged."""
        local = sum(self.valid_step(stage.unet_number, max_batch_size=max_batch_size) for _ in range(batches)) / batches
        loss = self.tracking.mean_over_processes(local)
        if self.tracking.enabled:
            self.tracking.log({f"valid/loss/unet{stage.unet_number}": loss}, step=stage.steps)
        return loss

    def _log_samples(self, stage, folder, prompts, options) -> None:
        if not self.is_main and not stage.sharded:
            return
        picture = self.sample_grid(prompts=prompts, **options)  # FSDP2: on every process (a collective forward)
        if not self.is_main:
            return
        if folder is not None:
            path = Path(folder) / f"sample-unet{stage.unet_number}-{stage.steps}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda p: picture.save(p, format="PNG"))
        if self.tracking.enabled:
            self.tracking.ensure_open()
            log_image(self.accelerator, f"samples/unet{stage.unet_number}", picture, stage.steps)

    # ------------------------------------------------------------------------------ checkpoints

    def _locate(self, path):
        """``(fs, path)``: a URL picks its own filesystem (with ``fs_kwargs``); a plain path lies on the
        checkpoint filesystem (``checkpoint_path``'s or ``checkpoint_fs``; local without them)."""
        text = str(path)
        if "://" in text:
            protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
            if not is_local(self.fs) and text.split("://", 1)[0] in protocols:
                return resolve(text, self.fs)  # the checkpoint filesystem (and its credentials)
            return resolve(text, None, self.fs_kwargs)
        return resolve(path, None if is_local(self.fs) else self.fs)

    def save(self, path, overwrite: bool = True, without_optim_and_sched: bool = False, *, layout: str | None = None,
             **kwargs) -> Path | str | None:
        """Writes the trainer's whole state to ``path`` (one safetensors file, atomically on a local
        disk, else written under a temporary name and moved; only the main process writes). ``path``
        may be an fsspec URL. Other keywords (JSON values) are stored with it, as the reference stores
        them in its checkpoint, and come back in the dict :meth:`load` returns. Call it on every
        process. Refuses to write non-finite weights. ``layout="folder"`` (default: the trainer's
        ``checkpoint_layout``) writes a per-stage checkpoint folder instead, every process its part
        (:mod:`imagen.trainer.checkpoint_folders`)."""
        try:
            extra = json.loads(json.dumps(kwargs))
        except (TypeError, ValueError) as error:
            raise TypeError(f"save's extra keywords {sorted(kwargs)} must be JSON values ({error})") from None
        fs, path = self._locate(path)
        if not overwrite and fs.exists(str(path)):
            raise ValueError(f"{path} exists and overwrite=False")
        for name, value in self.imagen.named_parameters():  # the same weights on every rank: all refuse
            if not torch.isfinite(value).all():
                raise NonFiniteTrainingError(f"refusing to save non-finite weights ({name})")
        layout = check_layout(self.checkpoint_layout if layout is None else layout, fs, self.accelerator)
        if layout == "folder":
            meta = dict(num_processes=self.accelerator.num_processes, seed=self.seed, precision=self.precision)
            return save_checkpoint_folder(path, imagen=self.imagen, stages=self.stages, accelerator=self.accelerator,
                                          generators=self._generators, meta=meta, data=self.data.state_dict(),
                                          user=extra, training=not without_optim_and_sched)
        rng_states = None if without_optim_and_sched else gather_generator_states(self.accelerator, self._generators)
        written = None
        data = self.data.state_dict()  # on every process: a shard stream gathers each one's position
        if self.is_main:
            meta = dict(num_processes=self.accelerator.num_processes, seed=self.seed, precision=self.precision)
            tensors, state = pack_state(
                self.imagen, self.stages, self.accelerator, meta=meta, rng_states=rng_states, data=data
            )
            if extra:
                state["user"] = extra
            written = save_checkpoint(path, tensors, imagen_config=self.imagen.config.to_json(), trainer_state=state,
                                      fs=fs)
            logger.info("saved checkpoint %s", path)
        self.accelerator.wait_for_everyone()
        return written

    def save_to_checkpoint_folder(self) -> Path | str | None:
        """Writes ``checkpoint.<total steps>.safetensors`` into ``checkpoint_path`` and removes all but
        the ``max_checkpoints_keep`` newest (all are kept when it is <= 0)."""
        if self.checkpoint_path is None:
            raise ValueError("save_to_checkpoint_folder needs checkpoint_path")
        name = folder_checkpoint_name(self.num_steps_taken(), self.checkpoint_layout)
        path = self.save(join(self.checkpoint_path, name))
        if self.is_main:
            prune_checkpoints(self.checkpoint_path, self.max_checkpoints_keep, self.fs)
        self.accelerator.wait_for_everyone()
        return path

    def _read(self, fs, path):
        """Our checkpoint (a file or a per-stage folder), or an imagen-pytorch ``.pt`` converted to our
        layout (weights-only load)."""
        if is_local(fs) and is_checkpoint_folder(path):
            return read_checkpoint_folder(path)
        with fs.open(str(path), "rb") as handle:
            head = handle.read(4)
        if not is_torch_save(head):
            return load_checkpoint(path, fs)
        try:
            ref = read_reference_checkpoint(str(path), fs=fs)
            config_json = ref.config().to_json() if ref.imagen_params is not None else None
            return checkpoint_from_reference(ref, self.imagen, config_json=config_json)
        except ReferenceCheckpointError as error:
            raise CheckpointError(str(error)) from None

    def _check_config(self, path, ckpt) -> None:
        """Refuses a checkpoint of another cascade; warns when only sampling settings differ."""
        if ckpt.imagen_config is None:
            return
        saved, current = json.loads(ckpt.imagen_config), json.loads(self.imagen.config.to_json())
        if ckpt.metadata.get("source") == REFERENCE_SOURCE:
            # the reference records the unet keywords as given, ours with every default filled in:
            # the architecture is checked by the weights instead (every key and shape must fit)
            saved.pop("unets", None)
            current.pop("unets", None)
        differences = config_differences(saved, current)
        refused = [k for k in differences if k not in SAMPLING_ONLY_SETTINGS]
        if refused:
            details = "; ".join(f"{k}: checkpoint {saved.get(k, '(absent)')!r}, trainer {current.get(k, '(absent)')!r}"
                                for k in refused[:4])
            raise ValueError(
                f"{path} was written for another cascade config than this trainer's imagen ({details}); only sampling "
                f"settings may differ ({sorted(SAMPLING_ONLY_SETTINGS)})"
            )
        if differences:
            warnings.warn(
                f"{path} was saved with other sampling settings ({', '.join(differences)}); the weights and training "
                "state are loaded, and this trainer's imagen keeps its own settings",
                stacklevel=3,
            )

    def load(self, path, only_model: bool = False, strict: bool = True, noop_if_not_exist: bool = False):
        """Restores the state written by :meth:`save` (every process reads the same file), or the
        state of an imagen-pytorch trainer checkpoint (``torch.load(weights_only=True)`` only; one
        that needs custom classes is refused). ``path`` may be an fsspec URL. Checks the file's
        integrity. The cascade must be the one saved, except for sampling settings
        (:data:`SAMPLING_ONLY_SETTINGS`), which may differ (with a warning). Returns the checkpoint's
        trainer state dict."""
        fs, path = self._locate(path)
        if not fs.exists(str(path)):
            if noop_if_not_exist:
                logger.info("no checkpoint at %s; nothing loaded", path)
                return None
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        ckpt = self._read(fs, path)
        if strict:
            self._check_config(path, ckpt)
        restore_weights(self.imagen, self.stages, ckpt, strict=strict)
        state = {**ckpt.trainer_state, **ckpt.trainer_state.get("user", {})}
        if only_model:
            return state
        restore_training(self.stages, ckpt)
        if isinstance(ckpt, FolderCheckpoint):  # optimizers and generators: from the sharded parts
            load_sharded_training(ckpt, self.stages, self._generators, self.accelerator)
        else:
            restore_generators(self._generators, ckpt, self.accelerator.process_index)
        saved_world = state.get("num_processes", self.accelerator.num_processes)
        if saved_world != self.accelerator.num_processes:
            warnings.warn(
                f"{path} was written by {saved_world} processes and is resumed by {self.accelerator.num_processes}: "
                "random streams and data order will not continue exactly",
                stacklevel=2,
            )
        self.data.load_state_dict(state.get("data", {}))
        logger.info("loaded checkpoint %s (steps %s)", path, self.steps.tolist())
        return state
