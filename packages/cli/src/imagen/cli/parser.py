"""argv -> an ``argparse.Namespace``: the commands, their options and the option types.

Usage errors are one line, ``imagen train: error: ... (see imagen train --help)``, exit status 2.
``train`` and ``encode-text`` also take every config field as a ``--<section>.<field>`` flag: those
are left in ``args.config_flags`` for ``typed_config.apply_overrides``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

PROG = "imagen"
CONFIG_COMMANDS = ("train", "encode-text")
"""The commands that read a config file, and so take ``--<section>.<field>`` flags."""
CONFIG_FLAG_PREFIXES = ("--imagen.", "--trainer.", "--dataset.")


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
    sample.add_argument("--prompts-file", default=None, metavar="FILE",
                        help="more prompts, one per line (UTF-8; blank lines ignored), sampled after the PROMPTs")
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
    merge.add_argument("output", metavar="OUT", help="the checkpoint to write: one safetensors file, or a per-stage "
                       "checkpoint folder when the RUNs are folders")
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


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``argv`` parsed by ``parser``; the dotted config flags of a config command go to
    ``args.config_flags``, any other leftover is a usage error (``SystemExit``, as argparse's)."""
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command not in CONFIG_COMMANDS or not extra[0].startswith(CONFIG_FLAG_PREFIXES)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.config_flags = extra
    return args
