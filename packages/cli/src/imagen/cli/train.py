"""``imagen train``: one unet of the config's cascade on the config's dataset, resuming from the
newest checkpoint in ``trainer.checkpoint_path``."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from .config_command import print_config_fields, read_config
from .data import dataset_from_config, valid_dataset
from .errors import CliError
from .prompts import read_prompts_file

DEFAULT_EPOCHS = 50
"""``imagen train``'s passes over the dataset when neither ``--epochs`` nor ``--steps`` is given (the reference's)."""
logger = logging.getLogger(__name__)


def check_unet(number: int, num_unets: int) -> None:
    if not 1 <= number <= num_unets:
        raise CliError(f"--unet {number} is out of range: this cascade has {num_unets} unets (1 to {num_unets})")


def check_video_frames(config) -> None:
    """A CliError unless ``dataset.video_frames`` divides by every stage's temporal downsampling."""
    factors = config.imagen.temporal_downsample_factor
    factors = factors if isinstance(factors, tuple) else (factors,) * len(config.imagen.unets)
    for number, factor in enumerate(factors, start=1):
        if config.dataset.video_frames % factor:
            raise CliError(f"dataset.video_frames {config.dataset.video_frames} is not divisible by unet {number}'s "
                           f"temporal_downsample_factor {factor}")


def sample_prompts(settings) -> list[str] | None:
    """The training grids' prompts: ``trainer.sample_prompts``, then those of ``sample_prompts_file``."""
    prompts = list(settings.sample_prompts)
    if settings.sample_prompts_file is not None:
        prompts += read_prompts_file(settings.sample_prompts_file, "trainer.sample_prompts_file")
    return prompts or None


def cmd_train(args) -> int:
    from imagen.trainer import ImagenTrainer, latest_checkpoint

    if args.help_config:
        return print_config_fields(args.config)
    config = read_config(args)
    if args.print_config:
        print(config.to_json())
        return 0
    num_unets = len(config.imagen.unets)
    check_unet(args.unet, num_unets)
    if config.imagen.video:
        check_video_frames(config)
    prompts = sample_prompts(config.trainer)
    remote = "://" in config.trainer.checkpoint_path  # an fsspec URL: the trainer reads it
    folder = Path(config.trainer.checkpoint_path)
    resume_from = None
    if isinstance(args.resume, str):
        resume_from = Path(args.resume)
        if not resume_from.is_file():
            raise CliError(f"--resume {args.resume}: no such checkpoint file")
    elif args.resume is True and not remote and latest_checkpoint(folder, include_reference=True) is None:
        raise CliError(f"--resume: no checkpoint in {folder} to continue from")
    # decoded at the trained stage's size: the cascade makes the low-res condition from it
    image_size = config.dataset.image_size or config.imagen.image_sizes[args.unet - 1]
    dataset = dataset_from_config(config, image_size=image_size)
    if config.imagen.condition_on_text and not dataset.has_captions:
        raise CliError(f"the cascade conditions on text but {config.dataset.folder!r} has no captions "
                       "(<image>.txt files or metadata.jsonl)")
    valid = valid_dataset(config, image_size=image_size)

    imagen = config.imagen.create(seed=config.trainer.seed)
    kwargs = config.trainer.trainer_kwargs()
    kwargs.update(verbose=not args.quiet, run_config=config.to_dict())
    trainer = ImagenTrainer(imagen, **kwargs)  # resumes from the newest checkpoint in checkpoint_path
    if resume_from is not None:
        trainer.load(resume_from)
    if args.resume is True and remote and trainer.num_steps_taken() == 0:
        raise CliError(f"--resume: no checkpoint in {config.trainer.checkpoint_path} to continue from")
    if trainer.num_steps_taken() > 0:
        logger.info("continuing from step %s", list(trainer.steps.tolist()))
    trainer.add_train_dataset(dataset, batch_size=config.dataset.batch_size, **config.dataset.loader_kwargs())
    if valid is not None:
        trainer.add_valid_dataset(valid, batch_size=min(config.dataset.batch_size, len(valid)))
    steps_per_epoch = math.ceil(len(dataset) / config.dataset.batch_size)  # a ShardDataset counts its samples
    steps = args.steps if args.steps is not None else (args.epochs or DEFAULT_EPOCHS) * steps_per_epoch
    settings = config.trainer
    trainer.fit(
        steps, args.unet, max_batch_size=settings.max_batch_size, validate_every=settings.validate_every,
        valid_batches=settings.valid_batches, sample_every=settings.sample_every,
        sample_prompts=prompts, sample_folder=settings.sample_folder,
        sample_kwargs={"steps": settings.sample_steps} if settings.sample_steps else None,
    )
    written = trainer.save_to_checkpoint_folder()
    if trainer.is_main:  # one report under accelerate launch
        print(f"trained unet {args.unet} for {steps} steps ({trainer.num_steps_taken(args.unet)} in all); "
              f"checkpoint {written}")
    return 0
