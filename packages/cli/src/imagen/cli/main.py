"""``cascade-cli`` (alias ``imagen``): config, train, sample, encode-text, convert, merge and demo.

Every user mistake (missing file, bad config key or value, unet number out of range, a file that is
not a checkpoint or a checkpoint of another cascade) ends the command with one line on stderr,
``imagen <command>: error: ...``, and exit status 2; outputs are written atomically, so a failed
command leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "imagen"
DEFAULT_COND_SCALE = 5.0
"""``imagen sample``'s guidance scale when none is given (the reference CLI's ``--cond_scale`` default)."""
DEFAULT_EPOCHS = 50
"""``imagen train``'s passes over the dataset when neither ``--epochs`` nor ``--steps`` is given (the reference's)."""
logger = logging.getLogger(__name__)


class CliError(Exception):
    """A user error: reported as one line on stderr with exit status 2."""


# ----------------------------------------------------------------------------------- argument types


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is out of range: it must be >= {low}")
        return value

    parse.__name__ = "integer"
    return parse


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range: it must be a finite number >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("it must be > 0")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "t", "yes", "y", "on"):
        return True
    if value in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


def _steps_list(text: str) -> list[int]:
    parse = _int_at_least(1)
    return [parse(part) for part in text.split(",")]


def _scale_list(text: str) -> list[float]:
    return [_non_negative_float(part) for part in text.split(",")]


def _skip_list(text: str) -> list[int]:
    parse = _int_at_least(0)
    return [parse(part) for part in text.split(",")]


def _sampler_list(text: str) -> list[str]:
    from imagen.diffusion import SAMPLERS, get_sampler

    names = [part.strip() for part in text.split(",")]
    for name in names:
        try:
            get_sampler(name)
        except ValueError:
            raise argparse.ArgumentTypeError(f"unknown sampler {name!r}; known samplers: {sorted(SAMPLERS)}") from None
    return names


# ----------------------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (``imagen train: error: ...``; ``--help`` shows usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``imagen`` / ``cascade-cli``."""
    parser = _Parser(
        prog=PROG,
        description="Configure, train and sample Imagen cascades; `imagen demo` trains one on built-in data.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config = commands.add_parser("config", help="write a default config file (JSON)")
    config.add_argument("--path", default="./imagen_config.json", help="where to write it (default: %(default)s)")
    config.add_argument("--force", action="store_true", help="replace an existing file")
    config.add_argument("--preset", help="write a named recipe instead (small-fast: imagen.cascade.small_fast)")
    config.add_argument("--image-sizes", type=_int_at_least(8), nargs="+", metavar="PX",
                        help="with --preset: the stages' sizes (small-fast: one base size, or base and SR)")

    train = commands.add_parser(
        "train",
        help="train (or resume training) one unet of the cascade",
        description="Trains one unet of the cascade on the config's dataset. Training continues from the "
        "newest checkpoint in trainer.checkpoint_path when there is one (all unets share one checkpoint); "
        "a checkpoint is written at the end and every trainer.checkpoint_every steps.",
    )
    train.add_argument("--config", default="./imagen_config.json",
                       help="config file, JSON or YAML (default: %(default)s); any field can be overridden with "
                       "--<section>.<field> VALUE, e.g. --trainer.lr 1e-4 --imagen.timesteps 250 (see --help-config)")
    train.add_argument("--print-config", action="store_true", help="print the config (file + overrides) and exit")
    train.add_argument("--help-config", action="store_true", help="list every config field flag and exit")
    train.add_argument("--unet", type=_int_at_least(1), default=1, help="unet number to train, from 1 (default: 1)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", "--epoches", type=_int_at_least(1), dest="epochs",
                        help="passes over the dataset (default: 50, as the reference)")
    length.add_argument("--steps", type=_int_at_least(1), help="optimizer steps (instead of --epochs)")
    train.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                       help="continue from CHECKPOINT, or (no value) require a checkpoint in "
                       "trainer.checkpoint_path to continue from")

    sample = commands.add_parser(
        "sample",
        help="sample images (or videos) for prompts from a checkpoint",
        description="Writes one PNG per prompt into --output-dir, named after the prompt "
        "('a red circle' -> a_red_circle.png); a video cascade writes an animated GIF and a folder of PNG "
        "frames per prompt. --steps and --sampler take one value for every stage or a comma-separated "
        "list with one value per stage, e.g. --steps 16,8 --sampler dpmpp_2m,euler.",
    )
    sample.add_argument("prompts", nargs="*", metavar="PROMPT", help="text prompts (one output each)")
    sample.add_argument("--model", default="./imagen.pt", help="a checkpoint file (ours, or an imagen-pytorch .pt), "
                        "a folder of checkpoints (the newest is used) or a save_pretrained folder "
                        "(default: %(default)s)")
    sample.add_argument("--cond-scale", "--cond_scale", dest="cond_scale", type=_scale_list, default=None,
                        help="classifier-free guidance scale, one or one per stage, e.g. 4,1 (default: 5.0 as the "
                        "reference, or 1.0 for a cascade without guidance)")
    sample.add_argument("--skip-steps", type=_skip_list, default=None,
                        help="per stage, e.g. 0,4: a later stage with N > 0 starts from the upsampled output of "
                        "the stage before and skips its first N steps (refines instead of redrawing); with "
                        "--init-image the first stage refines that image the same way (e.g. 10,4)")
    sample.add_argument("--init-image", default=None, metavar="PATH",
                        help="an image for the first stage to refine (img2img; needs --skip-steps N,...: the "
                        "more steps skipped, the more of the image is kept)")
    sample.add_argument("--inpaint-image", default=None, metavar="PATH", help="an image to inpaint (needs "
                        "--inpaint-mask)")
    sample.add_argument("--inpaint-mask", default=None, metavar="PATH",
                        help="a mask of the --inpaint-image's size: white pixels are redrawn, black ones kept")
    sample.add_argument("--steps", type=_steps_list, help="sampling steps, one or one per stage (e.g. 16,8)")
    sample.add_argument("--sampler", type=_sampler_list,
                        help="sampler, one or one per stage (ddpm, ddim, euler, euler_ancestral, heun, dpmpp_2m, ...)")
    sample.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed; prompt i uses seed + i")
    sample.add_argument("--batch-size", type=_int_at_least(1), default=16, help="prompts sampled together")
    sample.add_argument("--num-images", type=_int_at_least(1), default=1,
                        help="images for an unconditional cascade (which takes no prompts)")
    sample.add_argument("--video-frames", type=_int_at_least(1), default=8, help="frames of a video (default: 8)")
    sample.add_argument("--output-dir", default=".", help="folder for the outputs (default: the current folder)")
    sample.add_argument("--overwrite", action="store_true",
                        help="replace outputs of an earlier run with the same names (refused without it)")
    sample.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    ema = sample.add_mutually_exclusive_group()
    ema.add_argument("--no-ema", action="store_true", help="use the online weights instead of the EMA weights")
    ema.add_argument("--load_ema", "--load-ema", dest="load_ema", type=_boolean, default=None, metavar="BOOL",
                     help="the reference's spelling: true (default) samples with the EMA weights when the "
                     "checkpoint has them, false with the online weights")

    encode = commands.add_parser(
        "encode-text",
        help="precompute caption embeddings into a text cache",
        description="Encodes every caption of the config's dataset folder (or of --folder) with the "
        "cascade's text encoder and writes a text embedding cache; point dataset.text_embedding_cache at it.",
    )
    encode.add_argument("--config", default="./imagen_config.json", help="config file (default: %(default)s)")
    encode.add_argument("--folder", default=None, help="image folder with captions (default: dataset.folder)")
    encode.add_argument("--output", default=None, help="cache folder (default: dataset.text_embedding_cache)")
    encode.add_argument("--batch-size", type=_int_at_least(1), default=64, help="captions per encoder call")
    encode.add_argument("--overwrite", action="store_true", help="replace an existing cache")
    encode.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="the encoder's dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    encode.add_argument("--store-dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="the stored embeddings' dtype (default: the encoder's)")

    convert = commands.add_parser(
        "convert",
        help="convert an imagen-pytorch trainer checkpoint (.pt) into ours (safetensors)",
        description="Reads an imagen-pytorch ImagenTrainer checkpoint with torch.load(weights_only=True) (a file "
        "that needs custom classes is refused, nothing in it is run) and writes our checkpoint: online and "
        "EMA weights, step counts, optimizer and schedule state. The cascade comes from the checkpoint's "
        "imagen_params, or from --config when it has none.",
    )
    convert.add_argument("reference", metavar="REF.pt", help="the imagen-pytorch checkpoint")
    convert.add_argument("output", metavar="OUT", help="the checkpoint to write (one safetensors file)")
    convert.add_argument("--config", default=None, help="a cascade config JSON (an `imagen config` file, its "
                         "imagen section, or a save_pretrained config.json) when REF.pt holds no imagen_params")
    convert.add_argument("--force", action="store_true", help="replace an existing OUT")

    merge = commands.add_parser(
        "merge",
        help="one cascade checkpoint from stages trained in separate runs",
        description="Stage i of OUT comes from the run (checkpoint file or folder) that trained it: weights, EMA, "
        "step counts and optimizer state. The runs must be of one cascade (equal configs but for sampling "
        "settings). Where several runs trained a stage, choose with --stage N=PATH.",
    )
    merge.add_argument("output", metavar="OUT", help="the checkpoint to write (one safetensors file)")
    merge.add_argument("sources", metavar="RUN", nargs="+", help="checkpoint files or folders (newest file used)")
    merge.add_argument("--stage", action="append", default=[], metavar="N=PATH",
                       help="take unet N from PATH (one of the RUNs); repeatable")
    merge.add_argument("--force", action="store_true", help="replace an existing OUT")

    demo = commands.add_parser(
        "demo",
        help="train a small cascade on built-in shapes data and sample held-out prompts",
        description="Writes a captioned dataset of coloured shapes, builds a tiny T5, trains a base (16 px) "
        "and a super-resolution (32 px) stage, samples prompts never seen in training into a grid PNG, "
        "saves the checkpoint and prints how often the colour and the position came out right.",
    )
    demo.add_argument("--output-dir", default="./imagen-demo", help="where everything goes (default: %(default)s)")
    budget = demo.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=_positive_float, default=None,
                        help="training time budget in minutes (default: 8; the whole demo takes about 10)")
    budget.add_argument("--steps", type=_int_at_least(1), default=None,
                        help="fixed base-unet training steps instead of a time budget (reproducible)")
    demo.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of data, weights and samples")
    demo.add_argument("--threads", type=_int_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    return parser


# ------------------------------------------------------------------------------------------ helpers


def prompt_filename(prompt: str, taken: set[str] | None = None) -> str:
    """The file stem for a prompt: runs of characters other than letters, digits and '-' become '_'
    ("a squirrel raiding the birdfeeder" -> "a_squirrel_raiding_the_birdfeeder"); at most 120
    characters; a stem already in ``taken`` gets a numeric suffix (and is added to it)."""
    stem = re.sub(r"[^A-Za-z0-9-]+", "_", prompt).strip("_")[:120] or "sample"
    if taken is not None:
        base, n = stem, 1
        while stem in taken:
            stem, n = f"{base}_{n}", n + 1
        taken.add(stem)
    return stem


def seeded_train_step(trainer, unet_number: int, seed: int, **kwargs) -> float:
    """``trainer.train_step`` with the global RNG seeded from (seed, steps taken) inside a fork.

    The trainer's own generator drives the cascade's noise, crops and conditioning dropout, but
    ``nn.Dropout`` layers (a U-Net's ``dropout``) draw from the global RNG; seeding it per step makes a
    run, and a resumed run, reproducible whatever the U-Net.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1_000_003 + trainer.num_steps_taken())
        return trainer.train_step(unet_number, **kwargs)


def _make_folder(folder: Path, option: str) -> None:
    """Creates ``folder`` (and its parents) for an output, with a CliError naming ``option`` when it,
    or a folder above it, is a file."""
    for place in (folder, *folder.parents):
        if place.exists():
            if not place.is_dir():
                where = "is a file" if place == folder else f"is under {place}, which is a file"
                raise CliError(f"{option} {folder} {where}, not a folder")
            break
    folder.mkdir(parents=True, exist_ok=True)


def _refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    """A CliError naming the first output that already exists, unless ``overwrite``."""
    existing = [path for path in paths if path.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise CliError(f"{existing[0]} already exists{more}, from an earlier run; pass --overwrite to replace it "
                       "or choose another --output-dir")


def _checked_device(text: str | None):
    """``--device`` as a torch device that exists here (None: the default, the CPU)."""
    if text is None:
        return None
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CliError(f"--device {text!r} is not a torch device (for example cpu, cuda, cuda:1, mps)") from None
    backends = {"cpu": None, "cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None),
                "xpu": getattr(torch, "xpu", None)}
    if device.type not in backends:
        raise CliError(f"--device {text}: sampling runs on {', '.join(backends)} devices, not {device.type}")
    backend = backends[device.type]
    if backend is not None and not backend.is_available():
        raise CliError(f"--device {text}: this machine has no {device.type} device that torch can use")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CliError(f"--device {text}: there are {torch.cuda.device_count()} CUDA devices (0 to "
                       f"{torch.cuda.device_count() - 1})")
    return device


def _check_unet(number: int, num_unets: int) -> None:
    if not 1 <= number <= num_unets:
        raise CliError(f"--unet {number} is out of range: this cascade has {num_unets} unets (1 to {num_unets})")


def _per_stage(values: list | None, num_unets: int, option: str):
    if values is None:
        return None
    if len(values) == 1:
        return values[0]
    if len(values) != num_unets:
        raise CliError(
            f"{option} gives {len(values)} values, but the cascade has {num_unets} stages (give 1 or {num_unets})"
        )
    return tuple(values)


def _resolve_model_path(model: str) -> Path:
    from imagen.trainer import latest_checkpoint

    path = Path(model)
    if not path.exists():
        raise CliError(f"--model {model}: no such file or folder")
    if path.is_dir() and not (path / "config.json").is_file():
        newest = latest_checkpoint(path, include_reference=True)
        if newest is None:
            raise CliError(f"--model {model}: the folder holds no checkpoint (checkpoint.<steps>.safetensors) "
                           "and no save_pretrained cascade (config.json)")
        return newest
    return path


# ----------------------------------------------------------------------------------------- commands


def cmd_config(args) -> int:
    from .config import default_config, preset_config

    if args.image_sizes and not args.preset:
        raise CliError("--image-sizes needs --preset (the default config's sizes are fixed)")
    try:  # before anything is written: a bad preset or size is one line
        config = preset_config(args.preset, args.image_sizes) if args.preset else default_config()
    except ValueError as error:
        raise CliError(f"--preset {args.preset}: {error}") from None
    path = Path(args.path)
    if path.is_dir():
        raise CliError(f"--path {path} is a folder; give a file name such as {path / 'imagen_config.json'}")
    if path.exists() and not args.force:
        raise CliError(f"{path} already exists; pass --force to replace it")
    _make_folder(path.parent, "--path")
    config.write(path)
    print(f"wrote {path}")
    return 0


def _dataset(config, *, image_size: int, with_cache: bool = True):
    from imagen.trainer import Dataset

    data = config.dataset
    if data.shards is not None and with_cache:
        from imagen.trainer import ShardDataset

        return ShardDataset(data.shards, image_size=image_size, augment_horizontal_flip=data.augment_horizontal_flip,
                            convert_image_to=data.convert_image_to, captions=data.captions is not False)
    if not Path(data.folder).is_dir():
        raise CliError(f"dataset folder {data.folder!r} not found (set dataset.folder in the config)")
    cache = None
    if with_cache and data.text_embedding_cache is not None:
        from imagen.text import TextEmbeddingCache

        if not Path(data.text_embedding_cache).is_dir():
            raise CliError(
                f"text embedding cache {data.text_embedding_cache!r} not found (write it with `imagen encode-text`)"
            )
        cache = TextEmbeddingCache(data.text_embedding_cache)
    dataset = Dataset(
        data.folder, image_size=image_size, exts=data.exts, augment_horizontal_flip=data.augment_horizontal_flip,
        convert_image_to=data.convert_image_to, captions=data.captions, text_embedding_cache=cache,
    )
    if len(dataset) == 0:
        raise CliError(f"dataset folder {data.folder!r} holds no readable images with extensions {list(data.exts)}")
    return dataset


CONFIG_COMMANDS = ("train", "encode-text")
"""The commands that read a config file, and so take ``--<section>.<field>`` flags."""
CONFIG_FLAG_PREFIXES = ("--imagen.", "--trainer.", "--dataset.")


def read_config(args):
    """The command's config: its ``--config`` file (JSON or YAML) with the dotted flags applied."""
    from .config import CliConfig
    from .typed_config import apply_overrides, read_document

    return CliConfig.from_dict(apply_overrides(read_document(args.config), args.config_flags))


def _print_config_fields(path: str) -> int:
    """Prints every ``--<section>.<field>`` flag (for the cascade kind of the file at ``path``, if any)."""
    from .typed_config import fields_help, read_document

    kind = (read_document(path).get("imagen") or {}).get("kind", "Imagen") if Path(path).is_file() else "Imagen"
    print(fields_help(kind))
    return 0


def cmd_train(args) -> int:
    from imagen.trainer import Dataset, ImagenTrainer, latest_checkpoint


    if args.help_config:
        return _print_config_fields(args.config)
    config = read_config(args)
    if args.print_config:
        print(config.to_json())
        return 0
    num_unets = len(config.imagen.unets)
    _check_unet(args.unet, num_unets)
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
    dataset = _dataset(config, image_size=image_size)
    if config.imagen.condition_on_text and not dataset.has_captions:
        raise CliError(f"the cascade conditions on text but {config.dataset.folder!r} has no captions "
                       "(<image>.txt files or metadata.jsonl)")
    valid = None
    data = config.dataset
    if data.valid_folder is not None:  # held-out images, read like the training folder (without a text cache)
        if not Path(data.valid_folder).is_dir():
            raise CliError(f"validation folder {data.valid_folder!r} not found (dataset.valid_folder)")
        valid = Dataset(data.valid_folder, image_size=image_size, exts=data.exts, augment_horizontal_flip=False,
                        convert_image_to=data.convert_image_to, captions=data.captions)
        if len(valid) == 0 or (config.imagen.condition_on_text and not valid.has_captions):
            raise CliError(f"validation folder {data.valid_folder!r} holds no readable captioned images")

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
        sample_prompts=list(settings.sample_prompts) or None, sample_folder=settings.sample_folder,
        sample_kwargs={"steps": settings.sample_steps} if settings.sample_steps else None,
        step_fn=lambda trainer, unet, **kw: seeded_train_step(trainer, unet, settings.seed, **kw),
    )
    written = trainer.save_to_checkpoint_folder()
    if trainer.is_main:  # one report under accelerate launch
        print(f"trained unet {args.unet} for {steps} steps ({trainer.num_steps_taken(args.unet)} in all); "
              f"checkpoint {written}")
    return 0


def _write_images(images, stems: list[str], output_dir: Path) -> list[Path]:
    from imagen.cascade import atomic_write, to_pil_images

    paths = []
    for picture, stem in zip(to_pil_images(images), stems):
        path = output_dir / f"{stem}.png"
        atomic_write(path, lambda p, picture=picture: picture.save(p, format="PNG"))
        paths.append(path)
    return paths


def _write_videos(videos, stems: list[str], output_dir: Path) -> list[Path]:
    """Videos (B, C, F, H, W) in [0, 1] -> ``<stem>.gif`` plus ``<stem>/frame_000.png``..."""
    from imagen.cascade import atomic_write, to_pil_images

    paths = []
    for video, stem in zip(videos, stems):
        frames = to_pil_images(video.permute(1, 0, 2, 3))  # (F, C, H, W)
        frame_dir = output_dir / stem
        frame_dir.mkdir(exist_ok=True)
        for i, frame in enumerate(frames):
            atomic_write(frame_dir / f"frame_{i:03d}.png", lambda p, frame=frame: frame.save(p, format="PNG"))
        gif = output_dir / f"{stem}.gif"
        atomic_write(gif, lambda p, frames=frames: frames[0].save(
            p, format="GIF", save_all=True, append_images=frames[1:], duration=125, loop=0))
        paths.append(gif)
    return paths


def cmd_sample(args) -> int:
    import torch

    from imagen.cascade import load_imagen_from_checkpoint

    path = _resolve_model_path(args.model)
    use_ema = not args.no_ema and args.load_ema is not False
    cascade = load_imagen_from_checkpoint(path, load_ema_if_available=use_ema, device=_checked_device(args.device))
    cascade.eval()
    steps = _per_stage(args.steps, cascade.num_unets, "--steps")
    sampler = _per_stage(args.sampler, cascade.num_unets, "--sampler")
    guided = cascade.condition_on_text and cascade.cond_drop_prob > 0
    scales = args.cond_scale if args.cond_scale is not None else [DEFAULT_COND_SCALE if guided else 1.0]
    if any(scale != 1 for scale in scales) and not guided:
        raise CliError(f"--cond-scale {args.cond_scale}: this cascade was not trained for classifier-free guidance "
                       "(it needs condition_on_text and cond_drop_prob > 0); use --cond-scale 1")
    scales = _per_stage(scales, cascade.num_unets, "--cond-scale")
    scales = scales if isinstance(scales, tuple) else (scales,) * cascade.num_unets
    skips = _per_stage(args.skip_steps or [0], cascade.num_unets, "--skip-steps")
    skips = skips if isinstance(skips, tuple) else (skips,) * cascade.num_unets
    init = _image_file("--init-image", args.init_image) if args.init_image is not None else None
    if skips[0] != 0 and init is None:
        raise CliError(f"--skip-steps {args.skip_steps}: the first stage has no image to start from; "
                       "its value must be 0 (or give --init-image)")
    if init is not None and skips[0] == 0:
        raise CliError("--init-image needs --skip-steps N,... with N > 0: the first stage refines the image from "
                       "its step N (the more steps skipped, the more of the image is kept)")
    inpaint = _inpainting(args)
    plans = cascade.sampling_plan(steps=steps, sampler=sampler,
                                  video_frames=args.video_frames if cascade.is_video else None)
    for plan, skip in zip(plans, skips):
        if skip >= plan.steps:
            raise CliError(f"--skip-steps {args.skip_steps}: stage {plan.unet_number} samples {plan.steps} steps; "
                           "skip fewer")
    refine = tuple(skip or None for skip in skips)  # a stage with N > 0 refines the one before from step N
    prompts = list(args.prompts)
    if cascade.condition_on_text:
        if not prompts:
            raise CliError("this cascade conditions on text: give at least one prompt")
        for prompt in prompts:
            if not prompt.strip():
                raise CliError("prompts must not be empty")
        count = len(prompts)
    else:
        if prompts:
            raise CliError("this cascade does not condition on text: give no prompts (use --num-images)")
        count = args.num_images
    taken: set[str] = set()
    names = prompts or [f"sample_{i}" for i in range(count)]
    stems = [prompt_filename(p, taken) for p in names]
    output_dir = Path(args.output_dir)
    _make_folder(output_dir, "--output-dir")
    targets = [output_dir / f"{stem}.gif" for stem in stems] + [output_dir / stem for stem in stems] \
        if cascade.is_video else [output_dir / f"{stem}.png" for stem in stems]
    _refuse_overwrite(targets, args.overwrite)
    written = []
    for start in range(0, count, args.batch_size):
        stop = min(count, start + args.batch_size)
        generators = [torch.Generator(device=cascade.device).manual_seed(args.seed + i) for i in range(start, stop)]
        options = dict(steps=steps, sampler=sampler, use_tqdm=not args.quiet, batch_size=stop - start)
        if cascade.condition_on_text:
            options["texts"] = prompts[start:stop]
        if cascade.is_video:
            options["video_frames"] = args.video_frames
        if init is not None:
            options["init_images"] = (init.expand(stop - start, -1, -1, -1),) + (None,) * (cascade.num_unets - 1)
        if inpaint is not None:
            options["inpaint_images"] = inpaint[0].expand(stop - start, -1, -1, -1)
            options["inpaint_masks"] = inpaint[1].expand(stop - start, -1, -1)
        outputs = cascade.sample(cond_scale=scales, generator=generators, refine_from_step=refine,
                                 **options).float().cpu()
        write = _write_videos if cascade.is_video else _write_images
        written += write(outputs, stems[start:stop], output_dir)
    for path in written:
        print(path)
    return 0


def _image_file(option: str, path: str, mode: str = "RGB"):
    """The image at ``path`` as a float tensor in [0, 1]: (1, C, H, W), or (1, H, W) for mode "L"."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert(mode), dtype=np.float32) / 255
    except FileNotFoundError:
        raise CliError(f"{option} {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise CliError(f"{option} {path}: not an image PIL can read ({error})") from None
    tensor = torch.from_numpy(array)
    return tensor[None] if mode == "L" else tensor.permute(2, 0, 1)[None]


def _inpainting(args):
    """(image (1, 3, H, W), keep mask (1, H, W)) from --inpaint-image/--inpaint-mask, or None."""
    if (args.inpaint_image is None) != (args.inpaint_mask is None):
        raise CliError("--inpaint-image and --inpaint-mask go together: give both, or neither")
    if args.inpaint_image is None:
        return None
    image = _image_file("--inpaint-image", args.inpaint_image)
    mask = _image_file("--inpaint-mask", args.inpaint_mask, mode="L")
    if mask.shape[-2:] != image.shape[-2:]:
        raise CliError(f"--inpaint-mask {args.inpaint_mask} is {mask.shape[-1]}x{mask.shape[-2]} pixels, the "
                       f"--inpaint-image {image.shape[-1]}x{image.shape[-2]}: they must be of one size")
    return image, mask < 0.5  # black (kept) -> True: the cascade keeps where the mask is True


def cmd_encode_text(args) -> int:
    from imagen.text import T5Encoder, TextEmbeddingCache

    config = read_config(args)
    if not config.imagen.condition_on_text:
        raise CliError("the config's cascade does not condition on text: there is nothing to encode")
    output = args.output or config.dataset.text_embedding_cache
    if output is None:
        raise CliError("give --output or set dataset.text_embedding_cache in the config")
    folder = args.folder or config.dataset.folder
    if not Path(folder).is_dir():
        raise CliError(f"dataset folder {folder!r} not found")
    import attrs

    config = attrs.evolve(config, dataset=attrs.evolve(config.dataset, folder=folder))
    dataset = _dataset(config, image_size=1, with_cache=False)
    if not dataset.has_captions:
        raise CliError(f"{folder!r} has no captions (<image>.txt files or metadata.jsonl)")
    import torch
    from accelerate import PartialState

    # one process, or each of `accelerate launch -m imagen.cli encode-text` (gloo on a machine without GPUs)
    state = PartialState(cpu=not torch.cuda.is_available())
    if (Path(output) / "index.json").exists() and not args.overwrite:
        raise CliError(f"{output} already holds a text embedding cache; pass --overwrite to replace it")
    dtype = getattr(torch, args.dtype or ("bfloat16" if state.device.type == "cuda" else "float32"))
    encoder = T5Encoder(config.imagen.text_encoder_name, batch_size=args.batch_size, device=state.device, dtype=dtype)
    options = dict(batch_size=args.batch_size, progress=not args.quiet and state.is_main_process,
                   store_dtype=getattr(torch, args.store_dtype) if args.store_dtype else None)
    if state.num_processes == 1:
        cache = TextEmbeddingCache.build(output, dataset.captions, encoder, overwrite=args.overwrite, **options)
    else:  # each process encodes its share into a part; the main process merges them
        TextEmbeddingCache.build(output, dataset.captions, encoder, overwrite=True,
                                 part=(state.process_index, state.num_processes), **options)
        state.wait_for_everyone()
        if state.is_main_process:
            cache = TextEmbeddingCache.merge(output, overwrite=args.overwrite, remove_sources=True)
        state.wait_for_everyone()
    if state.is_main_process:
        print(f"cached {len(cache)} captions in {output}")
    return 0


def _cascade_config_file(path: str):
    """A cascade config from a JSON file: an `imagen config` file, a bare cascade config, or a
    ``save_pretrained`` config.json document."""
    import json

    from imagen.cascade import CascadeConfig

    file = Path(path)
    if not file.is_file():
        raise CliError(f"--config {path}: no such file")
    try:
        document = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CliError(f"--config {path} is not a JSON file ({error})") from None
    except RecursionError:
        raise CliError(f"--config {path} is nested too deeply to be a config") from None
    if isinstance(document, dict) and isinstance(document.get("imagen"), dict):
        document = document["imagen"]
    elif isinstance(document, dict) and isinstance(document.get("config"), dict):
        document = document["config"]
    if not isinstance(document, dict):
        raise CliError(f"--config {path} must hold a JSON object (a cascade config)")
    return CascadeConfig.from_dict(document)


def cmd_convert(args) -> int:
    from imagen.cascade import is_torch_save, read_reference_checkpoint
    from imagen.trainer import checkpoint_from_reference, save_checkpoint

    source, output = Path(args.reference), Path(args.output)
    if not source.is_file():
        raise CliError(f"{args.reference}: no such file")
    with open(source, "rb") as handle:
        if not is_torch_save(handle.read(4)):
            raise CliError(f"{args.reference} is not a torch.save file (an imagen-pytorch checkpoint is one)")
    if output.exists() and not args.force:
        raise CliError(f"{args.output} already exists; pass --force to replace it")
    if output.resolve() == source.resolve():
        raise CliError("OUT must not be REF.pt itself")
    config = _cascade_config_file(args.config) if args.config is not None else None
    ref = read_reference_checkpoint(source)
    cascade = (config or ref.config()).create()
    converted = checkpoint_from_reference(ref, cascade, config_json=cascade.config.to_json())
    if output.parent != Path() and not output.parent.is_dir():
        output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(output, converted.tensors, imagen_config=converted.imagen_config,
                    trainer_state=converted.trainer_state)
    state = converted.trainer_state
    print(f"converted {source} (imagen-pytorch {ref.version}, steps {state['steps']}, "
          f"EMA {'yes' if state['ema'] else 'no'}, optimizer state {'yes' if 'optimizers' in state else 'no'}) "
          f"-> {output}")
    return 0


def cmd_merge(args) -> int:
    from imagen.trainer import merge_stage_checkpoints

    output = Path(args.output)
    if output.exists() and not args.force:
        raise CliError(f"{args.output} already exists; pass --force to replace it")
    stages = {}
    for choice in args.stage:
        number, sep, path = choice.partition("=")
        if not sep or not number.strip().isdigit() or not path:
            raise CliError(f"--stage {choice!r}: expected N=PATH, e.g. --stage 2=runs/sr")
        stages[int(number)] = path
    if output.parent != Path() and not output.parent.is_dir():
        output.parent.mkdir(parents=True, exist_ok=True)
    chosen = merge_stage_checkpoints(output, args.sources, stages=stages)
    for number, source in chosen.items():
        print(f"unet {number} <- {source}")
    print(f"merged -> {output}")
    return 0


def cmd_demo(args) -> int:
    from .demo import DemoSettings, run_demo

    settings = DemoSettings(
        output_dir=args.output_dir, minutes=args.minutes if args.steps is None else None, steps=args.steps,
        seed=args.seed, progress=not args.quiet, threads=args.threads,
    )
    if args.steps is None and args.minutes is None:
        settings = DemoSettings(output_dir=args.output_dir, seed=args.seed, progress=not args.quiet,
                                threads=args.threads)
    summary = run_demo(settings)
    base, sr = summary["scores"]["base"], summary["scores"]["sr"]
    print(f"trained {summary['steps'][0]} base steps and {summary['steps'][1]} super-resolution steps "
          f"in {summary['train_seconds'] / 60:.1f} min; sampled {summary['samples']} images in "
          f"{summary['sample_seconds']:.1f} s")
    print(f"held-out prompts, 32 px samples: colour {sr['colour']:.0%}, position {sr['position']:.0%} "
          f"(16 px base: colour {base['colour']:.0%}, position {base['position']:.0%}; chance 17% and 20%)")
    print(f"samples: {summary['grid']}")
    print(f"checkpoint: {summary['checkpoint']} (try: imagen sample --model {summary['checkpoint']} "
          "--cond-scale 4,1 --skip-steps 0,4 --steps 16,8 "
          f"\"a red circle in the top left\")")
    print(f"total time {summary['total_seconds'] / 60:.1f} min")
    return 0


COMMANDS = {"config": cmd_config, "train": cmd_train, "sample": cmd_sample, "encode-text": cmd_encode_text,
            "convert": cmd_convert, "merge": cmd_merge, "demo": cmd_demo}


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status (0, or 2 for
    a user error, reported as one line on stderr)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and (args.command not in CONFIG_COMMANDS or not extra[0].startswith(CONFIG_FLAG_PREFIXES)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.config_flags = extra
    except SystemExit as exit_:
        return int(exit_.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("imagen.cli").setLevel(logging.WARNING if args.quiet else logging.INFO)
    from imagen.text import TextEncoderNotFoundError
    from imagen.trainer import CheckpointError

    try:
        return COMMANDS[args.command](args)
    except (CliError, CheckpointError, TextEncoderNotFoundError, OSError, ValueError, TypeError, KeyError) as error:
        print(f"{PROG} {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug, not a user mistake: still one line, the traceback on request
        if os.environ.get("IMAGEN_CLI_TRACEBACK"):
            raise
        print(f"{PROG} {args.command}: internal error: {type(error).__name__}: {_one_line(error)} "
              "(set IMAGEN_CLI_TRACEBACK=1 to see the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
