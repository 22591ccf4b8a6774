"""``Imagen`` and ``ElucidatedImagen``: cascades of U-Nets, trained stage by stage, sampled through all.

Stage 1 generates at the smallest size; every later stage is a super-resolution U-Net conditioned on
the previous stage's output (resized, and noised by noise-conditioning augmentation). Both kinds share
this module (set-up, text, training) and ``sampling.py``, and differ only in their stages
(``stages.py``): Gaussian (VP) diffusion or EDM.
"""

from __future__ import annotations

import functools
from typing import ClassVar

import attrs
import torch
from torch import nn

from imagen.diffusion import (
    first_generator,
    get_noise_schedule,
    q_sample,
    rand,
    randn,
    randn_like,
    sample_training_times,
)
from imagen.text import T5Encoder, get_encoded_dim
from imagen.unets import Unet, Unet3D, unet_from_config

from . import persistence
from .checks import check_keywords
from .conditioning import (
    batch_size_of,
    check_text_embeds,
    check_texts,
)
from .config import CascadeConfig, ElucidatedImagenConfig, ImagenConfig, per_unet
from .images import crop_at, crop_windows, normalize, resize, unnormalize
from .sampling import CascadeSampling, _warn_once
from .stages import ElucidatedStage, GaussianStage


@attrs.frozen(kw_only=True)
class TrainingDraws:
    """The random draws of one training step: the stage's noise level (t for a Gaussian stage,
    sigma for EDM) (B,), the noise like the (cropped) x0, the low-res augmentation times (B,) and
    noise (or None), the random-crop windows (B, 2) (top, left) or None, and the self-conditioning
    coin."""

    noise_level: torch.Tensor = attrs.field(eq=False)
    noise: torch.Tensor = attrs.field(eq=False)
    lowres_times: torch.Tensor | None = attrs.field(eq=False)
    lowres_noise: torch.Tensor | None = attrs.field(eq=False)
    crop_windows: torch.Tensor | None = attrs.field(default=None, eq=False)
    self_condition: bool


def build_unet(config: dict, *, video: bool = False) -> nn.Module:
    """A U-Net from its config dict; a dict without ``type`` is a ``Unet`` (``Unet3D`` for video)."""
    config = dict(config)
    config.setdefault("type", (Unet3D if video else Unet).__name__)
    return unet_from_config(config)


class Cascade(CascadeSampling, nn.Module):
    """The machinery shared by ``Imagen`` and ``ElucidatedImagen``; use one of those."""

    config_class: ClassVar[type[CascadeConfig]]

    def __init__(self, unets, **settings):
        super().__init__()
        unets = [unets] if isinstance(unets, nn.Module) else list(unets)
        for i, unet in enumerate(unets):
            if not isinstance(unet, nn.Module) or not hasattr(unet, "config"):
                raise TypeError(f"unets[{i}] must be a U-Net of imagen.unets, got {type(unet).__name__}")
        kinds = {unet.is_video for unet in unets if not unet.is_null}
        if len(kinds) > 1:
            raise ValueError("unets mix image U-Nets and video U-Nets (Unet3D); use one kind for every stage")
        settings.setdefault("video", kinds == {True})
        settings.setdefault("cond_drop_prob", 0.1)  # the reference's Imagen / ElucidatedImagen default
        config = self.config_class(unets=[unet.config for unet in unets], **settings)
        num_unets = len(unets)
        per_unet(config.image_sizes, num_unets, "image_sizes")
        self._config = config
        self.text_embed_dim = None
        if config.condition_on_text:
            self.text_embed_dim = config.text_embed_dim or get_encoded_dim(config.text_encoder_name)
        self.unets = nn.ModuleList(self._fit_unet(unet, i) for i, unet in enumerate(unets))
        # not saved; follows .to(), so ``device`` is the cascade's even while unets are parked elsewhere
        self.register_buffer("_device_tracker", torch.zeros(0), persistent=False)
        self._device_tracker = self._device_tracker.to(next(self.unets.parameters()).device)
        self.stages = [self._make_stage(i) for i in range(num_unets)]
        self._check_sizes()
        self._text_encoders: dict[str, object] = {}

    # ----------------------------------------------------------------------------------- set-up

    def _setting(self, name: str, index: int):
        """One stage's value of a setting that may be given per unet."""
        return per_unet(getattr(self._config, name), self.num_unets, name)[index]

    def _fit_unet(self, unet: nn.Module, index: int) -> nn.Module:
        """The unet, rebuilt where the cascade needs other settings (lowres conditioning, text width)."""
        if unet.is_null:
            return unet
        changes = dict(
            lowres_cond=index > 0, channels=self._config.channels, cond_on_text=self._config.condition_on_text
        )
        if self.text_embed_dim is not None:
            changes["text_embed_dim"] = self.text_embed_dim
        return unet.recast(**changes)

    def _check_sizes(self) -> None:
        crops = self._config.random_crop_sizes or (None,) * self.num_unets
        for number, (unet, size, crop) in enumerate(zip(self.unets, self.image_sizes, crops), start=1):
            for name, value in (("image_sizes", size), ("random_crop_sizes", crop)):
                if value is not None and value % unet.downsample_factor:
                    raise ValueError(
                        f"{name} gives {value} for unet {number}, which must be divisible by its total "
                        f"downsampling factor {unet.downsample_factor}"
                    )

    def _make_stage(self, index: int):
        raise NotImplementedError

    @property
    def config(self) -> CascadeConfig:
        """The cascade's config, with each unet's current config: ``config.create()`` rebuilds it."""
        return attrs.evolve(self._config, unets=[unet.config for unet in self.unets])

    @property
    def num_unets(self) -> int:
        return len(self.unets)

    @property
    def image_sizes(self) -> tuple[int, ...]:
        return self._config.image_sizes

    @property
    def channels(self) -> int:
        return self._config.channels

    @property
    def is_video(self) -> bool:
        return self._config.video

    @property
    def condition_on_text(self) -> bool:
        return self._config.condition_on_text

    @property
    def cond_drop_prob(self) -> float:
        return self._config.cond_drop_prob

    @property
    def only_train_unet_number(self) -> int | None:
        return self._config.only_train_unet_number

    @property
    def device(self) -> torch.device:
        """Where the cascade lives (its buffer's device: while ``sample(use_one_unet_in_gpu=True)``
        parks the idle unets on the CPU, this stays the accelerator)."""
        return self._device_tracker.device

    def get_unet(self, unet_number: int) -> nn.Module:
        """The U-Net of stage ``unet_number`` (counted from 1)."""
        return self.unets[self._index(unet_number)]

    def _index(self, unet_number, name: str = "unet_number") -> int:
        """The 0-based index of ``unet_number``; a ValueError naming the keyword ``name`` otherwise."""
        if isinstance(unet_number, bool) or not isinstance(unet_number, int) or not 1 <= unet_number <= self.num_unets:
            raise ValueError(f"{name} must be an integer in [1, {self.num_unets}], got {unet_number!r}")
        return unet_number - 1

    # ------------------------------------------------------------------------------------ text

    @property
    def text_encoder(self):
        """The text encoder for ``texts``: a lazily loaded ``T5Encoder`` of ``text_encoder_name`` on the
        cascade's device, in bf16 on a GPU (T5 keeps its range there; float32 on the CPU). Assign one
        to choose otherwise, e.g. ``imagen.text_encoder = T5Encoder(name, device="cuda")`` for fp32."""
        device = str(self.device)
        if device not in self._text_encoders:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
            self._text_encoders[device] = T5Encoder(self._config.text_encoder_name, device=self.device, dtype=dtype)
        return self._text_encoders[device]

    @text_encoder.setter
    def text_encoder(self, encoder) -> None:
        self._text_encoders = {str(self.device): encoder}

    def _text_condition(self, texts, text_embeds, text_masks, batch: int | None):
        """(text_embeds, text_mask) on the cascade's device, or (None, None) for an unconditional cascade."""
        if not self.condition_on_text:
            if text_embeds is not None:
                raise ValueError("this cascade has condition_on_text=False; it takes no text_embeds")
            if texts is not None:
                _warn_once("texts are ignored: this cascade has condition_on_text=False (as in the reference)")
            return None, None
        if texts is not None and text_embeds is not None:
            raise ValueError("give texts or text_embeds, not both")
        if texts is not None:
            batch_size_of("texts", check_texts(texts), batch)
            text_embeds, text_masks = self.text_encoder.encode(list(texts))
        elif text_embeds is None:
            raise ValueError("this cascade conditions on text: give texts or text_embeds (or condition_on_text=False)")
        batch_size_of("text_embeds", text_embeds, batch)
        text_masks = check_text_embeds(text_embeds, text_masks, self.text_embed_dim)
        return text_embeds.to(self.device, torch.float32), text_masks.to(self.device)

    # -------------------------------------------------------------------------------- shapes

    def _frames(self, index: int, frames: int | None) -> int | None:
        """Frames seen by stage ``index`` for a video of ``frames`` frames (temporal downsampling)."""
        if not self.is_video or frames is None:
            return None
        if frames == 1:  # images seen as single frames
            return 1
        factor = self._setting("temporal_downsample_factor", index)
        if frames % factor:
            raise ValueError(
                f"video of {frames} frames is not divisible by unet {index + 1}'s temporal_downsample_factor {factor}"
            )
        return frames // factor

    def _check_pixels(self, name: str, x: torch.Tensor, index: int) -> torch.Tensor:
        expected = "(B, C, F, H, W) videos or (B, C, H, W) images" if self.is_video else "(B, C, H, W) images"
        if x.ndim not in ((4, 5) if self.is_video else (4,)):
            raise ValueError(f"{name} must be {expected}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(f"{name} have {x.shape[1]} channels, but the cascade has channels={self.channels}")
        size = self.image_sizes[index]
        if min(x.shape[-2:]) < size:
            raise ValueError(
                f"{name} of size {tuple(x.shape[-2:])} are smaller than unet {index + 1}'s image size {size}"
            )
        return x

    def _resize(self, x: torch.Tensor, index: int, frames: int | None) -> torch.Tensor:
        return resize(x, self.image_sizes[index], frames=frames, mode=self._setting("resize_mode", 0))

    def _to_model_range(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels as given ([0, 1] with auto_normalize_img) -> the stages' range [-1, 1]."""
        return normalize(x.to(self.device)) if self._config.auto_normalize_img else x.to(self.device)

    def _to_output_range(self, x: torch.Tensor) -> torch.Tensor:
        return unnormalize(x) if self._config.auto_normalize_img else x

    def _pixel_conditions(self, index: int, batch: int, **given) -> dict[str, torch.Tensor]:
        """``cond_images`` and the video conditioning frames, checked and resized to stage ``index``
        (conditioning frames also temporally, with ``resize_cond_video_frames``)."""
        conditions = {}
        for name, value in given.items():
            if value is None:
                continue
            batch_size_of(name, value, batch)
            frames = None
            if name != "cond_images":
                if not self.is_video or value.ndim != 5:
                    raise ValueError(f"{name} are (B, C, F, H, W) frames for a video cascade, got {tuple(value.shape)}")
                frames = value.shape[2]
                if self._config.resize_cond_video_frames:
                    frames = max(1, frames // self._setting("temporal_downsample_factor", index))
            conditions[name] = self._resize(self._to_model_range(value), index, frames)
        return conditions

    def _lowres_augmentation(self, lowres: torch.Tensor, times: torch.Tensor, generators, noise=None):
        """Noise-conditioning augmentation: the low-res image noised to ``times`` (B,) of the lowres
        schedule. Returns the noised image and the log-SNR the U-Net is conditioned on."""
        log_snr = get_noise_schedule(self._config.lowres_noise_schedule).log_snr(times)
        noise = randn_like(lowres, generators) if noise is None else noise
        return q_sample(lowres, log_snr, noise), log_snr

    def _training_draws(self, index: int, x0: torch.Tensor, lowres: torch.Tensor | None, generator,
                        crop: int | None = None) -> TrainingDraws:
        """Every random draw of one training step, in the reference's order (the one helper a test
        replaces to feed the reference's draws). ``x0`` and ``lowres`` are uncropped; with ``crop``
        the noise comes at the crop's size (a Gaussian stage draws it whole and crops it, as the
        reference)."""
        batch, device = x0.shape[0], x0.device
        stage = self.stages[index]
        gaussian = not isinstance(stage, ElucidatedStage)
        cropped = x0.shape if crop is None else (*x0.shape[:-2], crop, crop)

        def draw_windows():
            if crop is None:
                return None
            return crop_windows(batch, *x0.shape[-2:], crop, generator, device=device)

        noise_level = stage.draw_noise_level(batch, generator, device) if gaussian else None
        lowres_times = lowres_noise = None
        if lowres is not None:
            count = batch if self._config.per_sample_random_aug_noise_level else 1
            lowres_times = sample_training_times(count, generator=generator, device=device).expand(batch)
        if gaussian:  # Gaussian: times, lowres times, the image noise, the crop, the lowres noise
            noise = randn_like(x0, generator)
            windows = draw_windows()
            noise = noise if crop is None else crop_at(noise, windows, crop)
            lowres_noise = None if lowres is None else randn(cropped, generator, device=device, dtype=x0.dtype)
        else:  # EDM: lowres times, the crop, the lowres noise, sigmas, the image noise
            windows = draw_windows()
            lowres_noise = None if lowres is None else randn(cropped, generator, device=device, dtype=x0.dtype)
            noise_level = stage.draw_noise_level(batch, generator, device)
            noise = randn(cropped, generator, device=device, dtype=x0.dtype)
        # one coin for the batch, read once here at the step's boundary (a Python branch follows)
        self_cond = bool(self.unets[index].self_cond) and bool(rand((), first_generator(generator)) < 0.5)
        return TrainingDraws(noise_level=noise_level, noise=noise, lowres_times=lowres_times,
                             lowres_noise=lowres_noise, crop_windows=windows, self_condition=self_cond)

    # ------------------------------------------------------------------------------- training

    def forward(
        self,
        images: torch.Tensor,
        *,
        unet_number: int | None = None,
        texts=None,
        text_embeds: torch.Tensor | None = None,
        text_masks: torch.Tensor | None = None,
        cond_images: torch.Tensor | None = None,
        ignore_time: bool = False,
        generator: torch.Generator | None = None,
        unet: nn.Module | None = None,
        cond_video_frames: torch.Tensor | None = None,
        post_cond_video_frames: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The training loss of stage ``unet_number`` for a batch of images (B, C, H, W) or videos
        (B, C, F, H, W) with values in [0, 1] (any size at least the stage's; they are resized).

        The low-res conditioning of a super-resolution stage is made from the same images at the
        previous stage's size, then noised (noise-conditioning augmentation). ``unet`` is a wrapper of
        that stage's U-Net to call instead of it (for example the DistributedDataParallel module that
        ``accelerate`` prepared); ``generator`` makes the noise draws reproducible.
        """
        if unet_number is None:
            if self.num_unets > 1 and self.only_train_unet_number is None:
                raise ValueError(f"unet_number is required: this cascade has {self.num_unets} unets")
            unet_number = self.only_train_unet_number or 1
        index = self._index(unet_number)
        if self.only_train_unet_number not in (None, unet_number):
            raise ValueError(
                f"this cascade only trains unet {self.only_train_unet_number} (only_train_unet_number), "
                f"got unet_number={unet_number}"
            )
        wrapped, unet = unet, self.unets[index]
        if unet.is_null:
            raise ValueError(f"unet {unet_number} is a NullUnet placeholder and cannot be trained")
        checked = check_keywords(self, images=images, cond_images=cond_images, text_embeds=text_embeds,
                                 cond_video_frames=cond_video_frames, post_cond_video_frames=post_cond_video_frames)
        images, cond_images, text_embeds = checked["images"], checked["cond_images"], checked["text_embeds"]
        cond_video_frames, post_cond_video_frames = checked["cond_video_frames"], checked["post_cond_video_frames"]
        images = self._to_model_range(self._check_pixels("images", images, index))
        batch = images.shape[0]
        text_embeds, text_masks = self._text_condition(texts, text_embeds, text_masks, batch)
        if self.is_video and images.ndim == 4:  # images train a video U-Net as single frames
            images, ignore_time = images.unsqueeze(2), True
        frames = images.shape[2] if images.ndim == 5 else None
        stage_frames = self._frames(index, frames)
        x0 = self._resize(images, index, stage_frames)
        lowres = None
        if index > 0:
            lowres = self._resize(self._resize(images, index - 1, self._frames(index - 1, frames)), index, stage_frames)
        pixels = self._pixel_conditions(index, batch, cond_images=cond_images, cond_video_frames=cond_video_frames,
                                        post_cond_video_frames=post_cond_video_frames)
        crop = (self._config.random_crop_sizes or (None,) * self.num_unets)[index]
        draws = self._training_draws(index, x0, lowres, generator, crop)
        if crop is not None:  # one window per sample, shared by the image, its low-res and pixel conditions
            x0, lowres = crop_at(x0, draws.crop_windows, crop), crop_at(lowres, draws.crop_windows, crop)
            pixels = {name: crop_at(value, draws.crop_windows, crop) for name, value in pixels.items()}
        lowres_log_snr = None
        if lowres is not None:
            lowres, lowres_log_snr = self._lowres_augmentation(lowres, draws.lowres_times, None, draws.lowres_noise)
        kwargs = dict(
            text_embeds=text_embeds,
            text_mask=text_masks,
            lowres_cond_img=lowres,
            lowres_noise_times=lowres_log_snr,
            cond_drop_prob=self.cond_drop_prob if self.condition_on_text else 0.0,
            generator=generator,  # the conditioning dropout draws from it too
            **pixels,
        )
        if unet.is_video:
            kwargs["ignore_time"] = ignore_time
        net = functools.partial(unet if wrapped is None else wrapped, **kwargs)
        return self.stages[index].training_loss(net, x0, noise_level=draws.noise_level, noise=draws.noise,
                                                self_condition=draws.self_condition)

    # ---------------------------------------------------------------------------- persistence

    def save_pretrained(self, folder) -> None:
        """Writes ``config.json`` and ``model.safetensors`` into ``folder`` (each atomically)."""
        persistence.save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder, *, device=None) -> Cascade:
        """The cascade saved by ``save_pretrained`` in ``folder`` (never unpickles)."""
        cascade = persistence.load_pretrained(folder, device=device)
        if not isinstance(cascade, cls):
            raise ValueError(f"{folder} holds a {type(cascade).__name__}, not a {cls.__name__}")
        return cascade


class Imagen(Cascade):
    """A cascade of Gaussian diffusion stages (Saharia et al. 2022).

    ``Imagen(unets, image_sizes=..., **settings)``: every keyword is a field of ``ImagenConfig``
    (``timesteps``, ``cond_drop_prob``, ``noise_schedules``, ``pred_objectives``, ``loss_type``, ...).
    """

    config_class = ImagenConfig

    def _make_stage(self, index: int) -> GaussianStage:
        setting = functools.partial(self._setting, index=index)
        return GaussianStage(
            noise_schedule=setting("noise_schedules"),
            objective=setting("pred_objectives"),
            loss_type=setting("loss_type"),
            min_snr_gamma=setting("min_snr_gamma") if setting("min_snr_loss_weight") else None,
            sample_steps=setting("timesteps"),
        )


class ElucidatedImagen(Cascade):
    """A cascade of EDM stages (Karras et al. 2022).

    ``ElucidatedImagen(unets, image_sizes=..., **settings)``: every keyword is a field of
    ``ElucidatedImagenConfig`` (``num_sample_steps``, ``sigma_min``, ``sigma_max``, ``P_mean``, ...).
    """

    config_class = ElucidatedImagenConfig

    def _make_stage(self, index: int) -> ElucidatedStage:
        names = ("sigma_min", "sigma_max", "sigma_data", "rho", "P_mean", "P_std",
                 "S_churn", "S_tmin", "S_tmax", "S_noise")
        return ElucidatedStage(
            sample_steps=self._setting("num_sample_steps", index),
            **{name: float(self._setting(name, index)) for name in names},
        )
