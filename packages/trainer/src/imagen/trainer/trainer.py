"""``ImagenTrainer``: trains any stage of an Imagen cascade on one CPU, one GPU or N processes.

Per stage it keeps an Adam(W) optimizer, a warm-up + cosine LR schedule, an optional fp16 grad
scaler and an EMA copy (ema-pytorch). Gradients are accumulated over chunks of ``max_batch_size``,
averaged across processes, checked for NaN/inf (a bad step is skipped, logged and counted; too many
in a row stop training), clipped, applied. Checkpoints are single safetensors files written
atomically (see :mod:`imagen.trainer.checkpoints`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from ema_pytorch import EMA
from torch import nn

from imagen.cascade import load_imagen_from_checkpoint

from .checkpoints import folder_checkpoint_name, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from .data import _mix_seed
from .optim import WarmupCosine, make_optimizer, optimizer_state_from_tensors, optimizer_state_to_tensors
from .streams import DatasetStream, IndexSubset, LoaderStream

__all__ = ["ImagenTrainer", "NonFiniteTrainingError"]

logger = logging.getLogger(__name__)

_PRECISIONS = {None: None, "no": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_EMA_KEYS = {"ema_beta": "beta", "ema_update_after_step": "update_after_step", "ema_update_every": "update_every"}


class NonFiniteTrainingError(RuntimeError):
    """Raised when too many consecutive steps had a non-finite loss or gradient."""


def _destroy_process_group() -> None:
    """Tear the process group down at exit (gloo aborts the interpreter when it is left alive)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()  # no process tears down while another still talks to it
        dist.destroy_process_group()


def _per_unet(value, num_unets: int, name: str) -> tuple:
    if isinstance(value, (tuple, list)):
        if len(value) != num_unets:
            raise ValueError(f"{name} gives {len(value)} values for a cascade of {num_unets} unets: {value!r}")
        return tuple(value)
    return (value,) * num_unets


class ImagenTrainer(nn.Module):
    """Trains an ``imagen.cascade`` Imagen or ElucidatedImagen, one stage per call.

    ``trainer(images, texts=... | text_embeds=..., text_masks=, cond_images=, unet_number=,
    max_batch_size=)`` accumulates gradients and returns the loss; ``trainer.update(unet_number)``
    applies them. ``lr``, ``eps``, ``beta1``, ``beta2``, ``weight_decay``, ``max_grad_norm``,
    ``warmup_steps`` and ``cosine_decay_max_steps`` may be tuples with one value per unet.
    ``precision`` is ``"no"``, ``"bf16"`` or ``"fp16"`` (with loss scaling); ``fp16=True`` means
    ``"fp16"``. ``ema_beta``, ``ema_update_after_step``, ``ema_update_every`` (and any other
    ``ema_<name>`` keyword of ``ema_pytorch.EMA``) configure the EMA; ``accelerate_<name>`` keywords
    go to ``accelerate.Accelerator``. With ``checkpoint_path`` the trainer resumes from the newest
    checkpoint there and writes one every ``checkpoint_every`` steps, keeping ``max_checkpoints_keep``.
    ``max_consecutive_nonfinite`` bad steps in a row raise :class:`NonFiniteTrainingError`.
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
        max_checkpoints_keep=20,
        *,
        weight_decay=0.0,
        seed=0,
        max_consecutive_nonfinite=10,
        accelerator=None,
        log_with=None,
        **kwargs,
    ):
        super().__init__()
        if (imagen is None) == (imagen_checkpoint_path is None):
            raise ValueError("give exactly one of imagen and imagen_checkpoint_path")
        if imagen is None:
            imagen = load_imagen_from_checkpoint(imagen_checkpoint_path)
        if checkpoint_fs is not None:
            raise ValueError(f"checkpoint_fs={checkpoint_fs!r} is not supported: checkpoints go to a local path")
        if fp16 and precision not in (None, "fp16"):
            raise ValueError(f"fp16=True conflicts with precision={precision!r}")
        precision = "fp16" if fp16 else precision
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of 'no', 'bf16', 'fp16' (or None), got {precision!r}")
        if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be None or an int >= 1, got {checkpoint_every!r}")
        if checkpoint_every is not None and checkpoint_path is None:
            raise ValueError("checkpoint_every needs checkpoint_path (the folder to write checkpoints to)")
        if not 0 < split_valid_fraction < 1:
            raise ValueError(f"split_valid_fraction must lie in (0, 1), got {split_valid_fraction!r}")

        ema_kwargs = {_EMA_KEYS.get(k, k[4:]): kwargs.pop(k) for k in list(kwargs) if k.startswith("ema_")}
        accelerate_kwargs = {k[11:]: kwargs.pop(k) for k in list(kwargs) if k.startswith("accelerate_")}
        if kwargs:
            raise TypeError(f"ImagenTrainer got unexpected keyword arguments {sorted(kwargs)}")
        if accelerator is None:
            if log_with is not None:
                accelerate_kwargs.setdefault("log_with", log_with)
            accelerator = Accelerator(**accelerate_kwargs)
            if log_with is not None:
                accelerator.init_trackers("imagen")
        self.accelerator = accelerator
        if accelerator.num_processes > 1:
            atexit.register(_destroy_process_group)
        self.imagen = imagen.to(self.device)
        num_unets = imagen.num_unets
        self.only_train_unet_number = only_train_unet_number or imagen.only_train_unet_number
        if self.only_train_unet_number is not None:
            imagen.get_unet(self.only_train_unet_number)  # validates the number
        self.use_ema, self.verbose, self.split_batches = use_ema, verbose, split_batches
        self.dl_tuple_output_keywords_names = tuple(dl_tuple_output_keywords_names)
        self.split_valid_fraction, self.split_valid_from_train = split_valid_fraction, split_valid_from_train
        self.split_random_seed, self.seed = split_random_seed, seed
        self.precision, self.max_consecutive_nonfinite = precision, max_consecutive_nonfinite
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.checkpoint_every, self.max_checkpoints_keep = checkpoint_every, max_checkpoints_keep
        self.max_grad_norm = _per_unet(max_grad_norm, num_unets, "max_grad_norm")

        self._sync_initial_weights()
        per = {
            name: _per_unet(value, num_unets, name)
            for name, value in dict(
                lr=lr, eps=eps, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
                warmup_steps=warmup_steps, cosine_decay_max_steps=cosine_decay_max_steps,
            ).items()
        }
        self.optimizers, self.schedulers, self.scalers = {}, {}, {}
        self.emas = nn.ModuleDict()
        for index, unet in enumerate(imagen.unets):
            if getattr(unet, "is_null", False):
                continue
            optimizer = make_optimizer(
                unet, lr=per["lr"][index], eps=per["eps"][index], betas=(per["beta1"][index], per["beta2"][index]),
                weight_decay=per["weight_decay"][index], group_wd_params=group_wd_params,
            )
            schedule = WarmupCosine(per["warmup_steps"][index], per["cosine_decay_max_steps"][index])
            self.optimizers[index] = optimizer
            self.schedulers[index] = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            self.scalers[index] = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
            if use_ema:
                self.emas[str(index)] = EMA(unet, include_online_model=False, **ema_kwargs)
        self._steps = [0] * num_unets
        self.nonfinite_steps = [0] * num_unets
        """Steps skipped for a non-finite loss or gradient, per unet (1-based unet i at index i - 1)."""
        self._consecutive_nonfinite = [0] * num_unets
        self._nonfinite_loss = [False] * num_unets
        process_seed = _mix_seed(seed, self.accelerator.process_index)
        self._generator = torch.Generator(self.device).manual_seed(process_seed)
        self._valid_generator = torch.Generator(self.device).manual_seed(_mix_seed(process_seed, 1))
        self._streams: dict[str, object] = {}
        self._pending_data_state: dict[str, dict] = {}

        if self.checkpoint_path is not None:
            newest = latest_checkpoint(self.checkpoint_path)
            if newest is not None:
                logger.info("resuming from %s", newest)
                self.load(newest)

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
    def steps(self) -> torch.Tensor:
        """Optimizer steps taken per unet, a (num_unets,) long tensor."""
        return torch.tensor(self._steps, dtype=torch.long)

    def num_steps_taken(self, unet_number: int | None = None) -> int:
        """Steps taken by one unet, or by all together when ``unet_number`` is None."""
        if unet_number is None:
            return sum(self._steps)
        if isinstance(unet_number, bool) or not isinstance(unet_number, int) or not 1 <= unet_number <= self.num_unets:
            raise ValueError(f"unet_number must be an int in [1, {self.num_unets}], got {unet_number!r}")
        return self._steps[unet_number - 1]

    def _resolve_unet_number(self, unet_number: int | None) -> int:
        if unet_number is None:
            if self.only_train_unet_number is not None:
                return self.only_train_unet_number
            if self.num_unets == 1:
                return 1
            raise ValueError(f"unet_number must be given for a cascade of {self.num_unets} unets")
        if isinstance(unet_number, bool) or not isinstance(unet_number, int) or not 1 <= unet_number <= self.num_unets:
            raise ValueError(f"unet_number must be an int in [1, {self.num_unets}], got {unet_number!r}")
        if self.only_train_unet_number is not None and unet_number != self.only_train_unet_number:
            raise ValueError(
                f"this trainer only trains unet {self.only_train_unet_number} (only_train_unet_number), "
                f"got unet_number={unet_number}"
            )
        if (unet_number - 1) not in self.optimizers:
            raise ValueError(f"unet {unet_number} is a NullUnet placeholder and cannot be trained")
        return unet_number

    # ------------------------------------------------------------------------------- training

    def _sync_initial_weights(self) -> None:
        """Every process starts from the main process's weights."""
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            with torch.no_grad():
                for tensor in list(self.imagen.parameters()) + list(self.imagen.buffers()):
                    dist.broadcast(tensor.data, src=0)

    def _autocast(self):
        dtype = _PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @staticmethod
    def _chunks(batch: int, max_batch_size: int | None, images, kwargs: dict):
        """Yields ``(fraction, images, kwargs)`` chunks of at most ``max_batch_size`` items; keyword
        values with the batch as first dimension (tensors, lists of texts) are split alongside."""
        if max_batch_size is None or max_batch_size >= batch:
            yield 1.0, images, kwargs
            return
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size must be None or an int >= 1, got {max_batch_size!r}")
        for start in range(0, batch, max_batch_size):
            stop = min(start + max_batch_size, batch)
            chunk = {}
            for key, value in kwargs.items():
                splittable = isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch
                splittable = splittable or (isinstance(value, (list, tuple)) and len(value) == batch)
                chunk[key] = value[start:stop] if splittable else value
            yield (stop - start) / batch, images[start:stop], chunk

    def _loss(self, images, unet_number, max_batch_size, kwargs, *, backward: bool, generator) -> float:
        index = unet_number - 1
        total = 0.0
        scaler = self.scalers[index]
        for fraction, chunk_images, chunk_kwargs in self._chunks(images.shape[0], max_batch_size, images, kwargs):
            with self._autocast():
                loss = self.imagen(chunk_images, unet_number=unet_number, generator=generator, **chunk_kwargs)
            loss = loss.float() * fraction
            if not torch.isfinite(loss):
                self._nonfinite_loss[index] = True
            total += loss.item()
            if backward:
                scaler.scale(loss).backward()
        return total

    def forward(self, images=None, *, unet_number: int | None = None, max_batch_size: int | None = None, **kwargs):
        """Accumulates the gradients of stage ``unet_number``'s loss on ``images`` (B, C, H, W) (or
        videos (B, C, F, H, W)) in chunks of ``max_batch_size``, and returns the loss (a float).
        Other keywords (``texts``, ``text_embeds``, ``text_masks``, ``cond_images``, ...) go to the
        cascade; those with the batch as first dimension are chunked with the images."""
        if images is None:
            images = kwargs.pop("images", None)
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor (B, C, H, W) or (B, C, F, H, W), got {type(images).__name__}")
        unet_number = self._resolve_unet_number(unet_number)
        self.imagen.get_unet(unet_number).train()
        return self._loss(images, unet_number, max_batch_size, kwargs, backward=True, generator=self._generator)

    def _sync_gradients(self, params: list[torch.Tensor]) -> None:
        """Averages gradients over processes (one all-reduce of the flattened gradients)."""
        if self.accelerator.num_processes == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.accelerator.num_processes
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def _any_process(self, flag: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def update(self, unet_number: int | None = None) -> bool:
        """Applies the accumulated gradients of one stage: average over processes, skip the step if
        the loss or gradient is not finite, clip, step the optimizer, LR schedule and EMA. Returns
        whether the step was taken. Writes a checkpoint every ``checkpoint_every`` steps."""
        unet_number = self._resolve_unet_number(unet_number)
        index = unet_number - 1
        unet = self.imagen.get_unet(unet_number)
        optimizer, scaler = self.optimizers[index], self.scalers[index]
        params = [p for p in unet.parameters() if p.requires_grad]
        self._sync_gradients(params)
        scaler.unscale_(optimizer)
        max_norm = self.max_grad_norm[index]
        norm = nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)
        bad = self._any_process(self._nonfinite_loss[index] or not bool(torch.isfinite(norm)))
        self._nonfinite_loss[index] = False
        if bad:
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            self.nonfinite_steps[index] += 1
            self._consecutive_nonfinite[index] += 1
            logger.warning(
                "unet %d: non-finite loss or gradient, step skipped (%d in a row, %d in all)",
                unet_number, self._consecutive_nonfinite[index], self.nonfinite_steps[index],
            )
            if self._consecutive_nonfinite[index] >= self.max_consecutive_nonfinite:
                raise NonFiniteTrainingError(
                    f"unet {unet_number}: {self._consecutive_nonfinite[index]} consecutive steps with a non-finite "
                    "loss or gradient; training stopped before NaN could reach the weights (lower lr, set "
                    "max_grad_norm, or check the data)"
                )
            return False
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.schedulers[index].step()
        if str(index) in self.emas:
            self.emas[str(index)].update()
        self._steps[index] += 1
        self._consecutive_nonfinite[index] = 0
        if self.checkpoint_every is not None and self.num_steps_taken() % self.checkpoint_every == 0:
            self.save_to_checkpoint_folder()
        return True

    # ------------------------------------------------------------------------------------ data

    def _stream_from_dataset(self, dataset, batch_size, seed, **dl_kwargs):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        world = self.accelerator.num_processes
        global_batch = batch_size if self.split_batches else batch_size * world
        shuffle = dl_kwargs.pop("shuffle", True)
        dl_kwargs.pop("drop_last", None)
        return DatasetStream(
            dataset, global_batch, num_replicas=world, rank=self.accelerator.process_index,
            seed=seed, shuffle=shuffle, **dl_kwargs,
        )

    def add_train_dataset(self, ds=None, *, batch_size, **dl_kwargs) -> None:
        """Train on ``ds`` (a map-style dataset) in batches of ``batch_size`` (the global batch when
        ``split_batches``, else per process). With ``split_valid_from_train`` a random
        ``split_valid_fraction`` of it becomes the validation set. Other keywords go to the DataLoader."""
        if ds is None:
            raise ValueError("add_train_dataset needs a dataset")
        if "train" in self._streams:
            raise ValueError("a training dataset or dataloader was already added")
        if self.split_valid_from_train:
            n = len(ds)
            n_valid = max(1, int(n * self.split_valid_fraction))
            if n_valid >= n:
                raise ValueError(f"a dataset of {n} items is too small to split {self.split_valid_fraction} off")
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_random_seed)).tolist()
            valid, ds = IndexSubset(ds, order[:n_valid]), IndexSubset(ds, order[n_valid:])
            self._set_stream("valid", self._stream_from_dataset(
                valid, min(batch_size, len(valid) * self.accelerator.num_processes) if self.split_batches
                else min(batch_size, len(valid)), _mix_seed(self.seed, 3), **dict(dl_kwargs)
            ))
            logger.info("split %d validation items off %d training items", n_valid, n)
        self._set_stream("train", self._stream_from_dataset(ds, batch_size, _mix_seed(self.seed, 2), **dl_kwargs))

    def add_valid_dataset(self, ds=None, *, batch_size, **dl_kwargs) -> None:
        """Validate on ``ds`` in batches of ``batch_size``."""
        if ds is None:
            raise ValueError("add_valid_dataset needs a dataset")
        if "valid" in self._streams:
            raise ValueError("a validation dataset or dataloader was already added")
        self._set_stream("valid", self._stream_from_dataset(ds, batch_size, _mix_seed(self.seed, 3), **dl_kwargs))

    def add_train_dataloader(self, dl=None) -> None:
        """Train on the batches of a user's DataLoader (prepared by accelerate across processes)."""
        if dl is None or "train" in self._streams:
            raise ValueError("add_train_dataloader needs a dataloader, and only one")
        self._set_stream("train", LoaderStream(dl, self.accelerator))

    def add_valid_dataloader(self, dl=None) -> None:
        """Validate on the batches of a user's DataLoader."""
        if dl is None or "valid" in self._streams:
            raise ValueError("add_valid_dataloader needs a dataloader, and only one")
        self._set_stream("valid", LoaderStream(dl, self.accelerator))

    def _set_stream(self, name: str, stream) -> None:
        if name in self._pending_data_state:  # a checkpoint loaded before the data was added
            stream.load_state_dict(self._pending_data_state[name])
        self._streams[name] = stream

    def _batch_kwargs(self, batch) -> dict:
        if isinstance(batch, torch.Tensor):
            return {"images": batch}
        if isinstance(batch, dict):
            return dict(batch)
        if isinstance(batch, (tuple, list)):
            if len(batch) > len(self.dl_tuple_output_keywords_names):
                raise ValueError(
                    f"the dataloader yields {len(batch)} values, more than dl_tuple_output_keywords_names "
                    f"{self.dl_tuple_output_keywords_names}"
                )
            return dict(zip(self.dl_tuple_output_keywords_names, batch))
        raise TypeError(f"a batch must be a tensor, a tuple or a dict, got {type(batch).__name__}")

    def _next_kwargs(self, split: str) -> dict:
        if split not in self._streams:
            raise ValueError(f"no {split} data: call add_{split}_dataset or add_{split}_dataloader first")
        return self._batch_kwargs(next(self._streams[split]))

    def train_step(self, unet_number: int | None = None, **kwargs) -> float:
        """One step on the next training batch: loss (chunked by ``max_batch_size``) and update."""
        unet_number = self._resolve_unet_number(unet_number)
        loss = self(**self._next_kwargs("train"), unet_number=unet_number, **kwargs)
        self.update(unet_number)
        if self.accelerator.trackers:
            self.accelerator.log({f"loss/unet{unet_number}": loss}, step=self.num_steps_taken())
        return loss

    @torch.no_grad()
    def valid_step(self, unet_number: int | None = None, use_ema_unets: bool = False, **kwargs) -> float:
        """The loss on the next validation batch (no gradients), through the EMA weights if asked."""
        unet_number = self._resolve_unet_number(unet_number)
        batch = self._next_kwargs("valid")
        max_batch_size = kwargs.pop("max_batch_size", None)
        images = batch.pop("images")
        with self.use_ema_unets() if use_ema_unets else contextlib.nullcontext():
            return self._loss(
                images, unet_number, max_batch_size, {**batch, **kwargs}, backward=False,
                generator=self._valid_generator,
            )

    # -------------------------------------------------------------------------------- sampling

    @contextlib.contextmanager
    def use_ema_unets(self):
        """Within the block the cascade's unets hold their EMA weights (restored on exit)."""
        saved = {}
        try:
            with torch.no_grad():
                for key, ema in self.emas.items():
                    unet = self.imagen.unets[int(key)]
                    saved[key] = {k: v.clone() for k, v in unet.state_dict().items()}
                    unet.load_state_dict(ema.ema_model.state_dict())
            yield self.imagen
        finally:
            with torch.no_grad():
                for key, state in saved.items():
                    self.imagen.unets[int(key)].load_state_dict(state)

    @torch.no_grad()
    def sample(self, *args, use_ema: bool | None = None, **kwargs):
        """``imagen.sample(...)`` through the EMA weights (unless ``use_ema=False`` or the trainer
        keeps no EMA); progress bars follow ``verbose`` unless ``use_tqdm`` is given."""
        kwargs.setdefault("use_tqdm", self.verbose and self.is_main)
        use_ema = self.use_ema if use_ema is None else use_ema
        was_training = self.imagen.training
        self.imagen.eval()
        try:
            with self.use_ema_unets() if use_ema else contextlib.nullcontext():
                return self.imagen.sample(*args, **kwargs)
        finally:
            self.imagen.train(was_training)

    def save_sample_grid(self, path, **sample_kwargs) -> Path | None:
        """Samples (through the EMA weights) and writes the images as one PNG grid (main process only)."""
        if not self.is_main:
            return None
        from PIL import Image

        images = self.sample(**sample_kwargs).float().clamp(0, 1).cpu()  # (B, C, H, W)
        if images.ndim != 4:
            raise ValueError("save_sample_grid is for image cascades")
        b, c, h, w = images.shape
        cols = math.ceil(math.sqrt(b))
        rows = math.ceil(b / cols)
        grid = torch.zeros(c, rows * h, cols * w)
        for i in range(b):
            r, q = divmod(i, cols)
            grid[:, r * h : (r + 1) * h, q * w : (q + 1) * w] = images[i]
        array = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)
        return path

    def fit(
        self,
        num_steps: int,
        unet_number: int | None = None,
        *,
        max_batch_size: int | None = None,
        valid_every: int | None = None,
        sample_every: int | None = None,
        sample_folder=None,
        sample_kwargs: dict | None = None,
    ) -> list[float]:
        """Runs ``num_steps`` train steps with a progress bar; validates every ``valid_every`` steps
        and writes a sample grid PNG into ``sample_folder`` every ``sample_every`` steps. Returns the
        training losses."""
        from tqdm.auto import tqdm

        unet_number = self._resolve_unet_number(unet_number)
        if sample_every is not None and sample_folder is None:
            raise ValueError("sample_every needs sample_folder")
        losses = []
        bar = tqdm(range(num_steps), disable=not (self.verbose and self.is_main), desc=f"unet {unet_number}")
        for _ in bar:
            losses.append(self.train_step(unet_number, max_batch_size=max_batch_size))
            step = self.num_steps_taken(unet_number)
            postfix = {"loss": f"{losses[-1]:.4f}"}
            if valid_every and step % valid_every == 0:
                valid = self.valid_step(unet_number, max_batch_size=max_batch_size)
                postfix["valid"] = f"{valid:.4f}"
                if self.accelerator.trackers:
                    self.accelerator.log({f"valid_loss/unet{unet_number}": valid}, step=self.num_steps_taken())
            if sample_every and step % sample_every == 0:
                options = dict(sample_kwargs or {})
                options.setdefault("stop_at_unet_number", unet_number)
                self.save_sample_grid(Path(sample_folder) / f"sample-unet{unet_number}-{step}.png", **options)
            bar.set_postfix(postfix)
        return losses

    # ------------------------------------------------------------------------------ checkpoints

    def _unet_prefixes(self) -> dict[int, str]:
        names = {id(module): name for name, module in self.imagen.named_modules()}
        return {i: names[id(unet)] + "." for i, unet in enumerate(self.imagen.unets)}

    def _state(self, rng_states: dict | None) -> tuple[dict, dict]:
        tensors = {f"imagen.{k}": v for k, v in self.imagen.state_dict().items()}
        prefixes = self._unet_prefixes()
        ema_imagen = dict(self.imagen.state_dict())
        ema_meta = {}
        for key, ema in self.emas.items():
            for k, v in ema.ema_model.state_dict().items():
                ema_imagen[prefixes[int(key)] + k] = v
            ema_meta[key] = {"step": int(ema.step.item()), "initted": bool(ema.initted.item())}
        if self.emas:
            tensors.update({f"ema_imagen.{k}": v for k, v in ema_imagen.items()})
        state = {
            "steps": list(self._steps),
            "nonfinite_steps": list(self.nonfinite_steps),
            "consecutive_nonfinite": list(self._consecutive_nonfinite),
            "ema": ema_meta,
            "num_processes": self.accelerator.num_processes,
            "seed": self.seed,
            "precision": self.precision,
        }
        if rng_states is not None:
            state["optimizers"], state["schedulers"], state["scalers"] = {}, {}, {}
            for index, optimizer in self.optimizers.items():
                opt_tensors, document = optimizer_state_to_tensors(optimizer, f"optim.{index}.")
                tensors.update(opt_tensors)
                state["optimizers"][str(index)] = document
                scheduler_state = self.schedulers[index].state_dict()
                state["schedulers"][str(index)] = scheduler_state
                state["scalers"][str(index)] = self.scalers[index].state_dict()
            for name, states in rng_states.items():
                for rank, rng_state in enumerate(states):
                    tensors[f"rng.{name}.{rank}"] = rng_state
            state["data"] = {name: stream.state_dict() for name, stream in self._streams.items()}
        return tensors, state

    def _gathered_rng_states(self) -> dict[str, list[torch.Tensor]]:
        """Every process's generator states (each process draws its own noise)."""
        out = {}
        for name, generator in (("train", self._generator), ("valid", self._valid_generator)):
            rng_state = generator.get_state()
            if self.accelerator.num_processes > 1:
                gathered = self.accelerator.gather(rng_state.to(self.device)).cpu()
                out[name] = list(gathered.reshape(self.accelerator.num_processes, -1))
            else:
                out[name] = [rng_state]
        return out

    def save(self, path, overwrite: bool = True, without_optim_and_sched: bool = False) -> Path | None:
        """Writes the trainer's whole state to ``path`` (one safetensors file, atomically; only the
        main process writes). Call it on every process. Refuses to write non-finite weights."""
        path = Path(path)
        if not overwrite and path.exists():
            raise ValueError(f"{path} exists and overwrite=False")
        written = None
        if not without_optim_and_sched:
            rng_states = self._gathered_rng_states()  # a collective: every process takes part
        if self.is_main:
            for name, value in self.imagen.named_parameters():
                if not torch.isfinite(value).all():
                    raise NonFiniteTrainingError(f"refusing to save non-finite weights ({name})")
            tensors, state = self._state(rng_states if not without_optim_and_sched else None)
            written = save_checkpoint(path, tensors, imagen_config=self.imagen.config.to_json(), trainer_state=state)
            logger.info("saved checkpoint %s", path)
        self.accelerator.wait_for_everyone()
        return written

    def save_to_checkpoint_folder(self) -> Path | None:
        """Writes ``checkpoint.<total steps>.safetensors`` into ``checkpoint_path`` and removes all but
        the ``max_checkpoints_keep`` newest."""
        if self.checkpoint_path is None:
            raise ValueError("save_to_checkpoint_folder needs checkpoint_path")
        path = self.save(self.checkpoint_path / folder_checkpoint_name(self.num_steps_taken()))
        if self.is_main:
            prune_checkpoints(self.checkpoint_path, self.max_checkpoints_keep)
        self.accelerator.wait_for_everyone()
        return path

    def load(self, path, only_model: bool = False, strict: bool = True, noop_if_not_exist: bool = False):
        """Restores the state written by :meth:`save` (every process reads the same file). Checks
        the file's integrity and never unpickles. Returns the checkpoint's trainer state dict."""
        path = Path(path)
        if noop_if_not_exist and not path.exists():
            logger.info("no checkpoint at %s; nothing loaded", path)
            return None
        ckpt = load_checkpoint(path)
        if strict and ckpt.imagen_config is not None:
            if json.loads(ckpt.imagen_config) != json.loads(self.imagen.config.to_json()):
                raise ValueError(f"{path} was written for another cascade config than this trainer's imagen")
        self.imagen.load_state_dict(ckpt.with_prefix("imagen."), strict=strict)
        state = ckpt.trainer_state
        ema_weights = ckpt.with_prefix("ema_imagen.")
        prefixes = self._unet_prefixes()
        with torch.no_grad():
            for key, ema in self.emas.items():
                prefix = prefixes[int(key)]
                weights = {k[len(prefix) :]: v for k, v in ema_weights.items() if k.startswith(prefix)}
                if weights:
                    ema.ema_model.load_state_dict(weights, strict=strict)
                meta = state.get("ema", {}).get(key)
                if meta is not None:
                    ema.step.fill_(meta["step"])
                    ema.initted.fill_(meta["initted"])
                elif not weights:
                    ema.ema_model.load_state_dict(self.imagen.unets[int(key)].state_dict())
        if only_model:
            return state
        self._steps = list(state.get("steps", self._steps))
        self.nonfinite_steps = list(state.get("nonfinite_steps", self.nonfinite_steps))
        self._consecutive_nonfinite = list(state.get("consecutive_nonfinite", self._consecutive_nonfinite))
        for key, document in state.get("optimizers", {}).items():
            index = int(key)
            self.optimizers[index].load_state_dict(
                optimizer_state_from_tensors(document, ckpt.tensors, f"optim.{index}.")
            )
            self.schedulers[index].load_state_dict(state["schedulers"][key])
            if state["scalers"][key]:
                self.scalers[index].load_state_dict(state["scalers"][key])
        rank = self.accelerator.process_index
        for name, generator in (("train", self._generator), ("valid", self._valid_generator)):
            rng_state = ckpt.tensors.get(f"rng.{name}.{rank}")
            if rng_state is not None:
                generator.set_state(rng_state.to(torch.uint8))
        saved_world = state.get("num_processes", self.accelerator.num_processes)
        if saved_world != self.accelerator.num_processes:
            warnings.warn(
                f"{path} was written by {saved_world} processes and is resumed by {self.accelerator.num_processes}: "
                "random streams and data order will not continue exactly",
                stacklevel=2,
            )
        self._pending_data_state = state.get("data", {})
        for name, stream in self._streams.items():
            if name in self._pending_data_state:
                stream.load_state_dict(self._pending_data_state[name])
        logger.info("loaded checkpoint %s (steps %s)", path, self._steps)
        return state
