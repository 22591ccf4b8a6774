"""The CLI's config file: one JSON document that maps one to one onto attrs classes.

    {"imagen":  {"kind": "Imagen" | "ElucidatedImagen", ...ImagenConfig / ElucidatedImagenConfig fields},
     "trainer": {...TrainerConfig fields (ImagenTrainer keywords)},
     "dataset": {...DatasetConfig fields (imagen.trainer.Dataset keywords, batch_size)}}

Every section is checked: an unknown key is an error that names it and lists the accepted keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from imagen.cascade import CascadeConfig, atomic_write


def _tuple_if_list(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_each(check):
    def validate(instance, attribute, value):
        for item in value if isinstance(value, tuple) else (value,):
            check(attribute.name, item)

    return validate


def _is_str(name: str, item: Any) -> None:
    if not isinstance(item, str):
        raise ValueError(f"trainer.{name} must be a name (or a list, one per unet), got {item!r}")


def _positive_number(name: str, item: Any) -> None:
    if isinstance(item, bool) or not isinstance(item, int | float) or not item > 0:
        raise ValueError(f"trainer.{name} must be a positive number (or a list, one per unet), got {item!r}")


def _non_negative_number(name: str, item: Any) -> None:
    if isinstance(item, bool) or not isinstance(item, int | float) or not item >= 0:
        raise ValueError(f"trainer.{name} must be a number >= 0 (or a list, one per unet), got {item!r}")


def _optional(check):
    def wrapped(name: str, item: Any) -> None:
        if item is not None:
            check(name, item)

    return wrapped


def _int_at_least(low: int, section: str, *, required: bool = False):
    def validate(instance, attribute, value):
        if value is None and not required:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{section}.{attribute.name} must be an integer >= {low}, got {value!r}")

    return validate


def _probability(instance, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ValueError(f"trainer.{attribute.name} must be a number in [0, 1), got {value!r}")


def _log_with(instance, attribute, value):
    names = value if isinstance(value, tuple) else (value,)
    if value is not None and (not names or not all(isinstance(name, str) and name for name in names)):
        raise ValueError(f"trainer.log_with must be null, a tracker name (\"tensorboard\", \"wandb\"...) or a list of "
                         f"names, got {value!r}")


def _prompts(instance, attribute, value):
    if not all(isinstance(prompt, str) and prompt.strip() for prompt in value):
        raise ValueError(f"trainer.sample_prompts must be a list of non-empty strings, got {list(value)!r}")


def _optional_str(section: str):
    def validate(instance, attribute, value):
        if value is not None and not (isinstance(value, str) and value):
            raise ValueError(f"{section}.{attribute.name} must be null or a non-empty string, got {value!r}")

    return validate


def _fraction(instance, attribute, value):
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"trainer.{attribute.name} must be a number in (0, 1), got {value!r}")


def _per_unet_field(default, check):
    return attrs.field(default=default, converter=_tuple_if_list, validator=_check_each(check))


def _from_section(cls, data: Any, section: str):
    """``cls(**data)``, with unknown keys reported by name."""
    if not isinstance(data, Mapping):
        raise ValueError(f"the config's {section!r} section must be a JSON object, got {type(data).__name__}")
    known = [f.name for f in attrs.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown {section} keys {unknown} in the config; accepted keys are {sorted(known)}")
    return cls(**data)


@attrs.frozen(kw_only=True)
class TrainerConfig:
    """The ``trainer`` section: ``ImagenTrainer`` keywords (per-unet values as lists) plus where and
    how often checkpoints are written. ``max_batch_size`` splits each batch into chunks of at most
    that many images (gradient accumulation).

    Tracking: ``log_with`` (``"tensorboard"``, ``"wandb"``... or a list; null: none) writes under
    ``project_dir`` every ``log_every`` steps; every ``sample_every`` steps a grid of
    ``sample_prompts`` (``sample_steps`` sampling steps, null: the cascade's own) goes to the trackers
    and, with ``sample_folder``, to PNG files (``sample_prompts_file``: a prompts file, one prompt per
    line, whose prompts follow ``sample_prompts``); every ``validate_every`` steps the loss of
    ``valid_batches`` batches of the held-out data (``dataset.valid_folder``, or a
    ``split_valid_fraction`` of the training folder with ``split_valid_from_train``) is logged.
    ``lr_scheduler`` names a ``transformers`` schedule (null: warm-up x cosine, the reference's).
    ``checkpoint_layout``: ``"file"`` (one safetensors file a checkpoint) or ``"folder"`` (per-stage
    files and sharded training state, docs/training-at-scale.md); null: folders under FSDP2."""

    lr: float | tuple = _per_unet_field(1e-3, _positive_number)
    eps: float | tuple = _per_unet_field(1e-8, _positive_number)
    beta1: float | tuple = _per_unet_field(0.9, _positive_number)
    beta2: float | tuple = _per_unet_field(0.99, _positive_number)
    weight_decay: float | tuple = _per_unet_field(0.0, _non_negative_number)
    max_grad_norm: float | tuple | None = _per_unet_field(1.0, _optional(_positive_number))
    warmup_steps: int | tuple | None = _per_unet_field(100, _optional(_non_negative_number))
    cosine_decay_max_steps: int | tuple | None = _per_unet_field(None, _optional(_positive_number))
    use_ema: bool = True
    ema_beta: float = attrs.field(default=0.995, validator=_probability)
    ema_update_after_step: int = attrs.field(default=20, validator=_int_at_least(0, "trainer"))
    ema_update_every: int = attrs.field(default=1, validator=_int_at_least(1, "trainer"))
    precision: str | None = attrs.field(  # None: the accelerate config's mixed precision (e.g. bf16)
        default=None, validator=attrs.validators.optional(attrs.validators.in_(("no", "bf16", "fp16"))))
    seed: int = attrs.field(default=0, validator=_int_at_least(0, "trainer"))
    checkpoint_path: str = "./checkpoints"  # a folder, or any fsspec URL (s3://bucket/run, memory://...)
    fs_kwargs: dict | None = attrs.field(default=None, validator=attrs.validators.optional(
        attrs.validators.instance_of(dict)))  # options of checkpoint_path's fsspec filesystem
    checkpoint_every: int | None = attrs.field(default=500, validator=_int_at_least(1, "trainer"))
    max_checkpoints_keep: int = attrs.field(default=3, validator=_int_at_least(0, "trainer"))  # 0: keep all
    max_batch_size: int | None = attrs.field(default=None, validator=_int_at_least(1, "trainer"))
    lr_scheduler: str | tuple | None = attrs.field(default=None, converter=_tuple_if_list,
                                                   validator=_check_each(_optional(_is_str)))
    log_with: str | tuple | None = attrs.field(default=None, converter=_tuple_if_list, validator=_log_with)
    project_dir: str = attrs.field(default="./runs", validator=_optional_str("trainer"))
    log_every: int = attrs.field(default=10, validator=_int_at_least(1, "trainer"))
    sample_every: int | None = attrs.field(default=None, validator=_int_at_least(1, "trainer"))
    sample_prompts: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_prompts)
    sample_prompts_file: str | None = attrs.field(default=None, validator=_optional_str("trainer"))
    sample_steps: int | None = attrs.field(default=None, validator=_int_at_least(1, "trainer"))
    sample_folder: str | None = attrs.field(default=None, validator=_optional_str("trainer"))
    validate_every: int | None = attrs.field(default=None, validator=_int_at_least(1, "trainer"))
    valid_batches: int = attrs.field(default=1, validator=_int_at_least(1, "trainer"))
    split_valid_from_train: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    split_valid_fraction: float = attrs.field(default=0.025, validator=_fraction)
    compile: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))  # torch.compile
    checkpoint_layout: str | None = attrs.field(  # None: "folder" under FSDP2, else "file"
        default=None, validator=attrs.validators.optional(attrs.validators.in_(("file", "folder"))))

    FIT_KEYS = ("max_batch_size", "sample_every", "sample_prompts", "sample_prompts_file", "sample_steps",
                "sample_folder", "validate_every", "valid_batches")
    """Keys that go to each step / ``fit`` rather than to ``ImagenTrainer``."""

    def trainer_kwargs(self) -> dict:
        """The keywords for ``ImagenTrainer`` (the :attr:`FIT_KEYS` go to the training loop instead;
        ``project_dir`` only with ``log_with``)."""
        values = attrs.asdict(self)
        for key in self.FIT_KEYS:
            values.pop(key)
        if values["log_with"] is None:
            values.pop("project_dir")
        return values


@attrs.frozen(kw_only=True)
class DatasetConfig:
    """The ``dataset`` section: an image folder with captions (``<image>.txt`` or
    ``metadata.jsonl``) read by ``imagen.trainer.Dataset``; ``image_size`` None means the cascade's
    largest size; ``text_embedding_cache`` is a folder written by ``encode-text`` (or None to encode
    captions on the fly with the cascade's text encoder); ``valid_folder`` is a held-out image folder
    of the same kind, for ``trainer.validate_every``.

    ``shards`` (instead of ``folder``, for data at scale): webdataset tar shards read by
    ``imagen.trainer.ShardDataset``: a ``shards.json`` index, the folder holding it, or a shard
    pattern (``data/shard-{000000..000099}.tar``, globs, fsspec URLs). Images are decoded at the
    trained stage's size (or ``image_size``). ``num_workers``, ``pin_memory``,
    ``persistent_workers`` and ``prefetch_factor`` are the training data loader's settings.

    ``hf_name`` or ``hf_path`` (instead of ``folder``): a Hugging Face ``datasets`` table read by
    ``imagen.trainer.HFDataset`` (needs ``imagen-trainer[hf]``): ``hf_name`` a dataset name from the
    ``datasets`` cache, offline-first (the reference CLI's ``dataset_name``), ``hf_path`` a
    ``save_to_disk`` folder or a folder (or file) of parquet/arrow data; ``hf_split`` the split (null:
    train + valid, as the reference), ``image_column`` / ``caption_column`` the columns (the
    reference's ``image_label`` / ``text_label``; null: found by type and name), ``text_embeds_column``
    a column of precomputed text embeddings (used instead of the captions).

    A video cascade (``imagen.video``) reads ``folder`` (and ``valid_folder``) as videos with
    ``imagen.trainer.VideoDataset``: animated GIFs and sub-folders of frame images (``exts``), clips of
    ``video_frames`` consecutive frames; an image cascade ignores ``video_frames``."""

    folder: str = "./images"
    image_size: int | None = attrs.field(default=None, validator=_int_at_least(1, "dataset"))
    batch_size: int = attrs.field(default=16, validator=_int_at_least(1, "dataset"))
    exts: tuple[str, ...] = attrs.field(default=("jpg", "jpeg", "png", "tiff", "webp", "bmp"), converter=tuple)
    augment_horizontal_flip: bool = True
    convert_image_to: str | None = "RGB"
    captions: bool | str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", True, False)))
    text_embedding_cache: str | None = None
    valid_folder: str | None = attrs.field(default=None, validator=_optional_str("dataset"))
    shards: str | None = attrs.field(default=None, validator=_optional_str("dataset"))
    num_workers: int = attrs.field(default=0, validator=_int_at_least(0, "dataset"))
    pin_memory: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    persistent_workers: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    prefetch_factor: int | None = attrs.field(default=None, validator=_int_at_least(1, "dataset"))
    hf_name: str | None = attrs.field(default=None, validator=_optional_str("dataset"))
    hf_path: str | None = attrs.field(default=None, validator=_optional_str("dataset"))
    hf_split: str | None = attrs.field(default=None, validator=_optional_str("dataset"))
    image_column: str | None = attrs.field(default=None, validator=_optional_str("dataset"))
    caption_column: str | None = attrs.field(default=None, validator=_optional_str("dataset"))
    text_embeds_column: str | None = attrs.field(default=None, validator=_optional_str("dataset"))
    video_frames: int = attrs.field(default=8, validator=_int_at_least(1, "dataset", required=True))

    def __attrs_post_init__(self):
        sources = [name for name in ("shards", "hf_name", "hf_path") if getattr(self, name) is not None]
        if len(sources) > 1:
            raise ValueError(f"dataset.{' and dataset.'.join(sources)} both name the training data: set one")

    def loader_kwargs(self) -> dict:
        """The data loader keywords of ``ImagenTrainer.add_train_dataset``."""
        return dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                    persistent_workers=self.persistent_workers, prefetch_factor=self.prefetch_factor)


@attrs.frozen(kw_only=True)
class CliConfig:
    """The whole config file: the cascade, the trainer and the dataset."""

    imagen: CascadeConfig
    trainer: TrainerConfig = attrs.field(factory=TrainerConfig)
    dataset: DatasetConfig = attrs.field(factory=DatasetConfig)

    SECTIONS = ("imagen", "trainer", "dataset")

    @classmethod
    def from_dict(cls, data: Any) -> CliConfig:
        """Builds the config from the parsed JSON document (unknown keys are errors that name them)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"the config must be a JSON object with sections {list(cls.SECTIONS)}")
        unknown = sorted(set(data) - set(cls.SECTIONS))
        if unknown:
            raise ValueError(f"unknown config sections {unknown}; accepted sections are {list(cls.SECTIONS)}")
        if "imagen" not in data:
            raise ValueError("the config has no 'imagen' section (the cascade's config)")
        if not isinstance(data["imagen"], Mapping):
            raise ValueError("the config's 'imagen' section must be a JSON object")
        return cls(
            imagen=CascadeConfig.from_dict(data["imagen"]),
            trainer=_from_section(TrainerConfig, data.get("trainer", {}), "trainer"),
            dataset=_from_section(DatasetConfig, data.get("dataset", {}), "dataset"),
        )

    def __attrs_post_init__(self):
        trainer, dataset = self.trainer, self.dataset
        if trainer.validate_every is not None and dataset.valid_folder is None and not trainer.split_valid_from_train:
            raise ValueError("trainer.validate_every needs held-out data: set dataset.valid_folder or "
                             "trainer.split_valid_from_train")
        if dataset.valid_folder is not None and trainer.split_valid_from_train:
            raise ValueError("dataset.valid_folder and trainer.split_valid_from_train both give validation data: "
                             "set one")
        if trainer.sample_every is not None and trainer.log_with is None and trainer.sample_folder is None:
            raise ValueError("trainer.sample_every needs trainer.log_with or trainer.sample_folder (where grids go)")
        prompted = bool(trainer.sample_prompts) or trainer.sample_prompts_file is not None
        if trainer.sample_every is not None and self.imagen.condition_on_text and not prompted:
            raise ValueError("trainer.sample_every: this cascade conditions on text; give trainer.sample_prompts "
                             "(or trainer.sample_prompts_file)")
        if prompted and not self.imagen.condition_on_text:
            key = "sample_prompts" if trainer.sample_prompts else "sample_prompts_file"
            raise ValueError(f"trainer.{key}: this cascade does not condition on text; give none")

    @classmethod
    def read(cls, path: str | Path) -> CliConfig:
        """Reads a config file (``FileNotFoundError`` when missing, ``ValueError`` when invalid)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"config file {str(path)!r} not found (write one with `imagen config --path {path}`)"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"config file {str(path)!r} is not valid JSON: {error}") from None
        except UnicodeDecodeError:
            raise ValueError(f"config file {str(path)!r} is not a text file") from None
        except RecursionError:
            raise ValueError(f"config file {str(path)!r} is nested too deeply to be a config") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return {
            "imagen": self.imagen.to_dict(),
            "trainer": json.loads(json.dumps(attrs.asdict(self.trainer))),
            "dataset": json.loads(json.dumps(attrs.asdict(self.dataset))),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def write(self, path: str | Path) -> None:
        """Writes the config as JSON, atomically."""
        text = self.to_json() + "\n"
        atomic_write(Path(path), lambda p: p.write_text(text))


def default_config() -> CliConfig:
    """The config ``imagen config`` writes: the demo's two-stage cascade (16 px base, 32 px
    super-resolution) with the default T5 encoder, an image folder ``./images`` and checkpoints in
    ``./checkpoints``."""
    from imagen.text import DEFAULT_T5_NAME

    from .demo import demo_cascade_config

    cascade = demo_cascade_config(DEFAULT_T5_NAME, text_embed_dim=None)
    return CliConfig(imagen=CascadeConfig.from_dict(cascade))


def preset_config(name: str, image_sizes: tuple[int, ...] | None = None) -> CliConfig:
    """The config ``imagen config --preset NAME`` writes: the named recipe of ``imagen.cascade.PRESETS``
    (``small-fast``: one 32 px EDM stage unless ``image_sizes`` says otherwise) with the default T5
    encoder, the recipe's learning rate, warm-up, clipping and EMA in ``trainer`` and its batch size in
    ``dataset``. The recipe's guidance is the one to sample with (``imagen sample --cond-scale``)."""
    from imagen.cascade import preset
    from imagen.text import DEFAULT_T5_NAME

    recipe = preset(name, *([tuple(image_sizes)] if image_sizes else []), text_encoder_name=DEFAULT_T5_NAME)
    return CliConfig(imagen=recipe.config, trainer=TrainerConfig(**recipe.trainer_options),
                     dataset=DatasetConfig(batch_size=recipe.batch_size))
