"""Frozen, validated, JSON-serialisable configurations of a cascade.

``ImagenConfig`` and ``ElucidatedImagenConfig`` hold every keyword of ``Imagen`` and
``ElucidatedImagen`` (the cascades build their config from their keywords, so each setting is
defined, defaulted, validated and documented once, here). Settings that the reference allows per
U-Net accept one value for all stages or a tuple with one value per stage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch

from imagen.diffusion import get_noise_schedule, get_sampler
from imagen.text import DEFAULT_T5_NAME

FORMAT = "imagen-cascade"
FORMAT_VERSION = 1


def _tuple_if_sequence(value: Any) -> Any:
    """Lists (as JSON gives them back) become tuples; scalars and None stay as they are."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(value)
    return value


# The reference's ``UnetConfig`` / ``Unet3DConfig`` defaults for a U-Net given as a dict of keywords
# (without "type"): they differ from the ``Unet`` class's own (8 heads x 64).
REFERENCE_UNET_CONFIG_DEFAULTS = {
    "text_embed_dim": 768, "cond_dim": None, "channels": 3, "attn_dim_head": 32, "attn_heads": 16,
}


def _reference_unet_dict(config: Mapping, name: str) -> dict:
    """A user's U-Net dict as the reference's config classes read it: ``dict(is_null=True)`` is a
    ``NullUnet``; other dicts need ``dim`` and ``dim_mults`` and get the reference's defaults."""
    config = dict(config)
    if "type" in config:  # a U-Net's own config (``unet.config``): complete as it is
        return config
    if config.pop("is_null", False):
        return {"type": "NullUnet"}
    missing = [key for key in ("dim", "dim_mults") if key not in config]
    if missing:
        raise ValueError(f"{name} must give {missing} (as the reference's UnetConfig requires), got {config!r}")
    return {**REFERENCE_UNET_CONFIG_DEFAULTS, **config}


def _unet_configs(value: Any) -> tuple[dict, ...]:
    if isinstance(value, Mapping):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ValueError(f"unets must be a non-empty sequence of U-Net config dicts, got {value!r}")
    for i, config in enumerate(value):
        if not isinstance(config, Mapping):
            raise ValueError(f"unets[{i}] must be a dict of U-Net keywords, got {type(config).__name__}")
    return tuple(
        _json_form(_reference_unet_dict(config, f"unets[{i}]"), f"unets[{i}]") for i, config in enumerate(value)
    )


def _json_form(config: Mapping, name: str) -> dict:
    """The dict as JSON gives it back (tuples become lists), so configs compare equal after a round trip."""
    try:
        return json.loads(json.dumps(dict(config)))
    except TypeError as error:
        raise ValueError(f"{name} must hold only JSON values (numbers, strings, lists, dicts): {error}") from None


def per_unet(value: Any, num_unets: int, name: str) -> tuple:
    """``value`` expanded to one entry per U-Net (a tuple must already have that length)."""
    if not isinstance(value, tuple):
        return (value,) * num_unets
    if len(value) != num_unets:
        raise ValueError(f"{name} has {len(value)} entries {value!r}, but the cascade has {num_unets} unets")
    return value


def _each(check):
    """A validator applying ``check(name, item)`` to a value or to each entry of a tuple."""

    def validate(instance, attribute, value):
        for item in value if isinstance(value, tuple) else (value,):
            check(attribute.name, item)

    return validate


# Upper bounds, so that a config file cannot ask for terabytes or years of sampling.
MAX_IMAGE_SIZE = 16_384
MAX_STEPS = 100_000
MAX_CHANNELS = 1_024
MAX_TEXT_EMBED_DIM = 65_536
MAX_UNETS = 64
_INT_BOUNDS = {"image_sizes": MAX_IMAGE_SIZE, "random_crop_sizes": MAX_IMAGE_SIZE, "timesteps": MAX_STEPS,
               "num_sample_steps": MAX_STEPS, "channels": MAX_CHANNELS, "text_embed_dim": MAX_TEXT_EMBED_DIM,
               "temporal_downsample_factor": 1_024}


def _positive_int(name: str, item: Any) -> None:
    limit = _INT_BOUNDS.get(name)
    if isinstance(item, bool) or not isinstance(item, int) or item < 1 or (limit is not None and item > limit):
        accepted = f"an integer in [1, {limit}]" if limit is not None else "a positive integer"
        raise ValueError(f"{name} must be {accepted} (or one per unet), got {item!r}")


def _positive_float(name: str, item: Any) -> None:
    if isinstance(item, bool) or not isinstance(item, int | float) or not 0 < item < math.inf:
        raise ValueError(f"{name} must be a finite number > 0 (or one per unet), got {item!r}")


def _within(low: float, high: float, *, open_low: bool = False):
    """A check: a finite number in [low, high] ((low, high] with ``open_low``). The EDM settings are
    bounded so that float32 sigmas (exp(P_mean + P_std * n), sigma_max) cannot overflow."""

    def check(name: str, item: Any) -> None:
        above = item > low if open_low else item >= low
        if isinstance(item, bool) or not isinstance(item, int | float) or not (above and item <= high):
            bounds = f"({low:g}, {high:g}]" if open_low else f"[{low:g}, {high:g}]"
            raise ValueError(f"{name} must be a number in {bounds} (or one per unet), got {item!r}")

    return check


def _flag(name: str, item: Any) -> None:
    if not isinstance(item, bool):
        raise ValueError(f"{name} must be True or False (or one per unet), got {item!r}")


def _is_bool(instance, attribute, value):
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name} must be True or False, got {value!r}")


def _text(instance, attribute, value):
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, got {value!r}")


def _to_float(value: Any) -> Any:
    """Numbers become floats; anything else is left for the validator to refuse, naming the field."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _one_of(*choices: str):
    def check(name: str, item: Any) -> None:
        if item not in choices:
            raise ValueError(f"{name} must be one of {list(choices)} (or one per unet), got {item!r}")

    return check


def _known(lookup):
    def check(name: str, item: Any) -> None:
        if item is not None:
            lookup(item)  # raises ValueError naming the unknown value

    return check


def _probability(instance, attribute, value):
    if not isinstance(value, float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a number in [0, 1], got {value!r}")


def _optional_crop_sizes(instance, attribute, value):
    if value is None:
        return
    if not isinstance(value, tuple):
        raise ValueError(f"random_crop_sizes must be None or one entry (None or an int) per unet, got {value!r}")
    for item in value:
        if item is not None:
            _positive_int(attribute.name, item)


def _field(default, *checks, converter=_tuple_if_sequence):
    return attrs.field(default=default, converter=converter, validator=[_each(c) for c in checks])


@attrs.frozen(kw_only=True)
class CascadeConfig:
    """Settings shared by both kinds of cascade. See the subclasses."""

    kind: ClassVar[str] = ""
    unets: tuple[dict, ...] = attrs.field(converter=_unet_configs)
    image_sizes: int | tuple[int, ...] = attrs.field(converter=_tuple_if_sequence, validator=_each(_positive_int))
    text_encoder_name: str = attrs.field(default=DEFAULT_T5_NAME, validator=_text)
    text_embed_dim: int | None = attrs.field(default=None)
    channels: int = _field(3, _positive_int)
    video: bool = attrs.field(default=False, validator=_is_bool)
    # 0.5 as the reference's config classes (the cascade classes themselves default to 0.1)
    cond_drop_prob: float = attrs.field(default=0.5, converter=_to_float, validator=_probability)
    random_crop_sizes: tuple | None = attrs.field(
        default=None, converter=_tuple_if_sequence, validator=_optional_crop_sizes
    )
    lowres_noise_schedule: str = _field("linear", _known(get_noise_schedule))
    lowres_sample_noise_level: float = attrs.field(default=0.2, converter=_to_float, validator=_probability)
    per_sample_random_aug_noise_level: bool = attrs.field(default=False, validator=_is_bool)
    condition_on_text: bool = attrs.field(default=True, validator=_is_bool)
    auto_normalize_img: bool = attrs.field(default=True, validator=_is_bool)
    dynamic_thresholding: bool | tuple = _field(True, _flag)
    dynamic_thresholding_percentile: float = attrs.field(default=0.95, converter=_to_float, validator=_probability)
    only_train_unet_number: int | None = attrs.field(default=None)
    temporal_downsample_factor: int | tuple = _field(1, _positive_int)
    resize_cond_video_frames: bool = attrs.field(default=True, validator=_is_bool)
    resize_mode: str = _field("nearest", _one_of("nearest", "bilinear", "bicubic", "area", "nearest-exact"))
    sampler: str | tuple | None = _field(None, _known(get_sampler))

    def __attrs_post_init__(self):
        if not isinstance(self.image_sizes, tuple):
            object.__setattr__(self, "image_sizes", (self.image_sizes,))
        n = len(self.unets)
        if n > MAX_UNETS:
            raise ValueError(f"unets must hold at most {MAX_UNETS} U-Nets, got {n}")
        self._expand_defaults(n)
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if field.name not in ("unets", "random_crop_sizes") and isinstance(value, tuple):
                per_unet(value, n, field.name)
        if self.random_crop_sizes is not None:
            per_unet(self.random_crop_sizes, n, "random_crop_sizes")
        if list(self.image_sizes) != sorted(self.image_sizes):
            raise ValueError(f"image_sizes must not decrease from one unet to the next, got {self.image_sizes!r}")
        number = self.only_train_unet_number
        if number is not None and (isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= n):
            raise ValueError(f"only_train_unet_number must be None or an integer in [1, {n}], got {number!r}")
        if self.text_embed_dim is not None:
            _positive_int("text_embed_dim", self.text_embed_dim)

    def _expand_defaults(self, num_unets: int) -> None:
        """Fills in settings whose default depends on the number of unets (see ``ImagenConfig``)."""

    def to_dict(self) -> dict:
        """The config as plain JSON types, tagged with its kind."""
        values = {f.name: getattr(self, f.name) for f in attrs.fields(type(self))}
        return {"kind": self.kind, **json.loads(json.dumps(values))}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CascadeConfig:
        """Builds the config of the kind named in ``data`` (unknown keys are an error naming them)."""
        data = dict(data)
        kind = data.pop("kind", cls.kind)
        config_class = CONFIG_CLASSES.get(kind)
        if config_class is None or not issubclass(config_class, cls):
            raise ValueError(f"unknown cascade kind {kind!r}; expected one of {sorted(CONFIG_CLASSES)}")
        known = {f.name for f in attrs.fields(config_class)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {config_class.__name__} keys {unknown}; accepted keys are {sorted(known)}")
        return config_class(**data)

    @classmethod
    def from_json(cls, text: str) -> CascadeConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"cascade config is not valid JSON: {error}") from None
        except RecursionError:
            raise ValueError("cascade config is nested too deeply to be a config (JSON depth over ~1000)") from None
        if not isinstance(data, dict):
            raise ValueError(f"cascade config must be a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    def create(self, *, seed: int | None = None):
        """Builds the cascade (with freshly initialised U-Nets) that this config describes; with
        ``seed`` the initial weights are a function of it (the global RNG is left as it was)."""
        from .cascade import build_unet  # the cascades import this module: import late

        settings = {f.name: getattr(self, f.name) for f in attrs.fields(type(self)) if f.name != "unets"}
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            unets = []
            for i, config in enumerate(self.unets):
                try:
                    unets.append(build_unet(config, video=self.video))
                except (TypeError, ValueError) as error:  # name the entry of the config file
                    raise type(error)(f"unets[{i}]: {error}") from None
            return self.cascade_class()(unets, **settings)


@attrs.frozen(kw_only=True)
class ImagenConfig(CascadeConfig):
    """Configuration of ``Imagen``: a cascade of Gaussian (variance-preserving) diffusion stages.

    ``timesteps`` is the default number of sampling steps per stage; ``noise_schedules``
    (``cosine`` or ``linear``), ``pred_objectives`` (``noise``, ``x_start`` or ``v``) and
    ``loss_type`` (``l1``, ``l2``, ``huber``) define each stage's training; ``min_snr_loss_weight``
    with ``min_snr_gamma`` weights the loss as in Hang et al. 2023. As in the reference,
    ``noise_schedules`` is padded to one per unet with ``cosine`` up to the second unet and
    ``linear`` beyond (the default gives cosine, cosine, linear, ...).
    """

    kind: ClassVar[str] = "Imagen"
    timesteps: int | tuple = _field(1000, _positive_int)
    noise_schedules: str | tuple = _field("cosine", _known(get_noise_schedule))
    pred_objectives: str | tuple = _field("noise", _one_of("noise", "x_start", "v"))
    loss_type: str | tuple = _field("l2", _one_of("l1", "l2", "huber"))
    min_snr_loss_weight: bool | tuple = _field(True, _flag)
    min_snr_gamma: float | tuple = _field(5.0, _positive_float)

    def _expand_defaults(self, num_unets: int) -> None:
        schedules = self.noise_schedules if isinstance(self.noise_schedules, tuple) else (self.noise_schedules,)
        if len(schedules) > num_unets:
            raise ValueError(
                f"noise_schedules has {len(schedules)} entries {schedules!r}, but the cascade has {num_unets} unets"
            )
        padded = schedules + ("cosine",) * max(0, 2 - len(schedules)) + ("linear",) * num_unets
        object.__setattr__(self, "noise_schedules", padded[:num_unets])

    @staticmethod
    def cascade_class():
        from .cascade import Imagen

        return Imagen


@attrs.frozen(kw_only=True)
class ElucidatedImagenConfig(CascadeConfig):
    """Configuration of ``ElucidatedImagen``: stages trained and sampled as in Karras et al. 2022 (EDM).

    ``num_sample_steps`` and the Karras sigma schedule (``sigma_min``, ``sigma_max``, ``rho``) define
    sampling, ``P_mean``/``P_std`` the log-normal training noise, ``sigma_data`` the preconditioning,
    and ``S_churn``, ``S_tmin``, ``S_tmax``, ``S_noise`` the stochastic Heun sampler (Table 5).
    """

    kind: ClassVar[str] = "ElucidatedImagen"
    num_sample_steps: int | tuple = _field(32, _positive_int)
    sigma_min: float | tuple = _field(0.002, _within(0, 1e4, open_low=True))
    sigma_max: float | tuple = _field(80.0, _within(0, 1e4, open_low=True))
    sigma_data: float | tuple = _field(0.5, _within(0, 1e3, open_low=True))
    rho: float | tuple = _field(7.0, _within(0, 1e3, open_low=True))
    P_mean: float | tuple = _field(-1.2, _within(-20, 20))
    P_std: float | tuple = _field(1.2, _within(0, 10, open_low=True))
    S_churn: float | tuple = _field(80.0, _within(0, 1e4))
    S_tmin: float | tuple = _field(0.05, _within(0, 1e4))
    S_tmax: float | tuple = _field(50.0, _within(0, 1e4))
    S_noise: float | tuple = _field(1.003, _within(0, 10, open_low=True))

    @staticmethod
    def cascade_class():
        from .cascade import ElucidatedImagen

        return ElucidatedImagen


CONFIG_CLASSES: dict[str, type[CascadeConfig]] = {
    "Imagen": ImagenConfig,
    "ElucidatedImagen": ElucidatedImagenConfig,
}
