"""Learning benchmark (issue 14): how fast does a single base stage learn to follow prompts?

    python bench/learning.py run --system recipe --minutes 15          # checkpoints at 5, 10, 15 min
    python bench/learning.py run --system seed --steps 600 --eval-at 200,400,600
    python bench/learning.py run --system recipe --steps 600 --ablate lr   # one choice back to the reference's
    python bench/learning.py plot RESULT.json ... --png bench/learning_curve.png

``run`` trains one system from scratch at ``--size`` px on the demo's shapes generator (colour x
shape x position; the combinations ``shapes.is_held_out`` marks, 15 of 90 = 1/6, never appear in
training), then samples every held-out combination and as many seen ones and scores colour, shape,
position and all three with the demo's closed-form checker. It prints one JSON summary, writes it
to ``--json`` when given and appends a markdown row to ``--markdown`` (default bench/learning.md).
Training time excludes the evaluations (their sampling is timed apart, as images/s); both count the
process's CPU time by default (``--clock cpu``: the issue's "CPU-minutes", the same on a loaded
machine; ``--clock wall`` for wall-clock time).

Systems (one process each; ``reference`` sets up imagen-pytorch 2.1.0's environment first, as
reference/conftest.py does):

- ``seed``: the issue's keywords through our packages: ``Unet(dim=32, cond_dim=128,
  dim_mults=(1, 2, 4), num_resnet_blocks=2, layer_attns=(False, True, True),
  layer_cross_attns=(False, True, True))`` in an ``Imagen`` with 100 DDPM steps, ImagenTrainer
  lr 3e-4 with its default EMA, guidance 3, the reference defaults for everything else.
- ``reference``: the same keywords through imagen-pytorch 2.1.0 (Unet, Imagen, ImagenTrainer).
- ``recipe``: ``imagen.cascade.small_fast`` (its config, trainer options, batch and sampling).

The text encoder is the demo's tiny T5 built from the captions' words (random weights, seed 0).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEXT_DIM = 32
SEED_UNET = dict(dim=32, cond_dim=128, dim_mults=(1, 2, 4), num_resnet_blocks=2, layer_attns=(False, True, True),
                 layer_cross_attns=(False, True, True))
SEED_TRAINING = dict(lr=3e-4)
SEED_SAMPLING = dict(cond_scale=3.0)
SEED_TIMESTEPS = 100


# ----------------------------------------------------------------------------------------- data
def make_data(size: int, count: int, seed: int, folder: Path):
    """(images (N, 3, size, size) in [0, 1], embeds (N, L, TEXT_DIM), masks (N, L), encoder)."""
    import numpy as np

    from imagen.cli import shapes
    from imagen.text import T5Encoder
    from imagen.text.testing import build_tiny_t5

    build_tiny_t5(folder / "tiny-t5", words=shapes.vocabulary(), d_model=TEXT_DIM, seed=0)
    encoder = T5Encoder(folder / "tiny-t5")
    images, captions = [], []
    for image, text in shapes.training_examples(count, size, seed=seed):
        images.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)
        captions.append(text)
    unique = sorted(set(captions))
    embeds, masks = encoder.encode(unique)
    index = torch.tensor([unique.index(c) for c in captions])
    return torch.stack(images), embeds[index], masks[index], encoder


def eval_prompts(samples_per_prompt: int, seed: int, prompts: int | None = None) -> tuple[list[tuple], list[tuple]]:
    """(held-out triples, seen triples), each repeated ``samples_per_prompt`` times: the first
    ``prompts`` held-out combinations (default all 15) and as many seen ones, a fixed draw of ``seed``."""
    import random

    from imagen.cli import shapes

    held = shapes.held_out_prompts()[:prompts]
    seen = [c for c in shapes.combinations() if not shapes.is_held_out(*c)]
    seen = random.Random(seed).sample(seen, len(held))
    return ([t for t in held for _ in range(samples_per_prompt)],
            [t for t in seen for _ in range(samples_per_prompt)])


# ----------------------------------------------------------------------------------------- systems
class System:
    """One trainable system: a trainer with the reference's ``trainer(images, ...)`` / ``update``
    / ``sample`` API, a batch size and the keywords its samples take."""

    def __init__(self, trainer, batch_size: int, sample_options: dict, description: dict):
        self.trainer, self.batch_size = trainer, batch_size
        self.sample_options, self.description = sample_options, description

    def step(self, images, embeds, masks) -> float:
        loss = self.trainer(images, text_embeds=embeds, text_masks=masks, unet_number=1)
        self.trainer.update(unet_number=1)
        return float(loss)

    @torch.no_grad()
    def sample(self, embeds, masks, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)  # the reference draws its noise from the global RNG
        images = self.trainer.sample(text_embeds=embeds, text_masks=masks, **self.sample_options)
        return images.float().clamp(0, 1).cpu()


def seed_system(size: int, folder: Path, seed: int, batch_size: int) -> System:
    from imagen.cascade import Imagen
    from imagen.trainer import ImagenTrainer
    from imagen.unets import Unet

    torch.manual_seed(seed)
    imagen = Imagen(unets=Unet(**SEED_UNET), image_sizes=size, timesteps=SEED_TIMESTEPS, text_embed_dim=TEXT_DIM,
                    text_encoder_name=str(folder / "tiny-t5"))
    trainer = ImagenTrainer(imagen, **SEED_TRAINING, verbose=False, seed=seed)
    return System(trainer, batch_size, dict(SEED_SAMPLING, use_tqdm=False, generator=seed),
                  dict(unet=SEED_UNET, training=SEED_TRAINING, sampling=SEED_SAMPLING, timesteps=SEED_TIMESTEPS))


def prepare_reference() -> None:
    """imagen-pytorch's offline environment (reference/ref_env.py); must run before transformers is imported."""
    sys.path.insert(0, str(ROOT / "reference"))
    import ref_env

    ref_env.prepare()


def reference_system(size: int, folder: Path, seed: int, batch_size: int) -> System:
    from imagen_pytorch import Imagen, ImagenTrainer, Unet

    torch.manual_seed(seed)
    imagen = Imagen(unets=Unet(**SEED_UNET), image_sizes=size, timesteps=SEED_TIMESTEPS, text_embed_dim=TEXT_DIM)
    trainer = ImagenTrainer(imagen, **SEED_TRAINING, verbose=False)
    return System(trainer, batch_size, dict(SEED_SAMPLING, use_tqdm=False),
                  dict(unet=SEED_UNET, training=SEED_TRAINING, sampling=SEED_SAMPLING, timesteps=SEED_TIMESTEPS,
                       package="imagen-pytorch 2.1.0"))


def recipe_system(size: int, folder: Path, seed: int, batch_size: int | None, ablate: str | None,
                  total_steps: int | None) -> System:
    from imagen.cascade import small_fast
    from imagen.cli.demo import TEXT_LEN
    from imagen.trainer import ImagenTrainer

    recipe = small_fast(size, text_embed_dim=TEXT_DIM, text_encoder_name=str(folder / "tiny-t5"),
                        total_steps=total_steps, max_text_len=TEXT_LEN)  # as the demo: the captions fit
    if ablate:
        recipe = recipe.with_reference(ablate)
    imagen = recipe.config.create(seed=seed)
    trainer = ImagenTrainer(imagen, **recipe.trainer_options, verbose=False, seed=seed)
    return System(trainer, batch_size or recipe.batch_size, dict(recipe.sample_options, use_tqdm=False,
                                                                  generator=seed),
                  dict(recipe=recipe.name, ablate=ablate, config=recipe.config.to_dict(),
                       trainer=recipe.trainer_options, batch_size=recipe.batch_size, sampling=recipe.sample_options))


# ----------------------------------------------------------------------------------------- run
CLOCKS = {"cpu": time.process_time, "wall": time.monotonic}
"""What a budget counts: the process's CPU seconds (all its threads; independent of other jobs on the
machine, the issue's "CPU-minutes") or wall-clock seconds."""


def evaluate(system: System, encoder, samples_per_prompt: int, seed: int, prompts: int | None,
             clock=time.process_time) -> dict:
    from imagen.cli import shapes

    held, seen = eval_prompts(samples_per_prompt, seed, prompts)
    result = {}
    began = clock()
    for offset, (name, triples) in enumerate((("held_out", held), ("seen", seen))):
        embeds, masks = encoder.encode([shapes.caption(*t) for t in triples])
        images = system.sample(embeds, masks, seed * 1000 + offset)  # the two sets from different noise
        result[name] = shapes.score(images, triples)
    seconds = clock() - began
    result["images_per_s"] = (len(held) + len(seen)) / seconds
    return result


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    if args.system == "reference":
        prepare_reference()
    with tempfile.TemporaryDirectory(prefix="imagen-learning-") as tmp:
        folder = Path(tmp)
        images, embeds, masks, encoder = make_data(args.size, args.dataset_size, args.seed, folder)
        if args.system == "seed":
            system = seed_system(args.size, folder, args.seed, args.batch_size or 32)
        elif args.system == "reference":
            system = reference_system(args.size, folder, args.seed, args.batch_size or 32)
        else:
            system = recipe_system(args.size, folder, args.seed, args.batch_size, args.ablate,
                                   args.steps if args.cosine_decay else None)
        if args.steps is not None:
            marks = sorted(int(s) for s in args.eval_at.split(",")) if args.eval_at else [args.steps]
        else:
            marks = sorted(float(m) * 60 for m in (args.eval_at or f"{args.minutes / 3},{2 * args.minutes / 3},"
                                                                  f"{args.minutes}").split(","))
        order, clock = torch.Generator().manual_seed(args.seed), CLOCKS[args.clock]
        curve, steps, train_seconds, losses = [], 0, 0.0, []
        for mark in marks:
            while (steps < mark) if args.steps is not None else (train_seconds < mark):
                began = clock()
                pick = torch.randint(len(images), (system.batch_size,), generator=order)
                losses.append(system.step(images[pick], embeds[pick], masks[pick]))
                train_seconds += clock() - began
                steps += 1
            point = dict(steps=steps, minutes=train_seconds / 60, loss=sum(losses[-50:]) / len(losses[-50:]))
            point.update(evaluate(system, encoder, args.samples_per_prompt, args.seed, args.prompts, clock))
            curve.append(point)
            print(json.dumps(point), file=sys.stderr, flush=True)
    final = curve[-1]
    return dict(
        system=args.system, ablate=args.ablate, size=args.size, seed=args.seed, steps=steps,
        train_minutes=train_seconds / 60, steps_per_s=steps / train_seconds, images_per_s=final["images_per_s"],
        held_out=final["held_out"], seen=final["seen"], curve=curve, batch_size=system.batch_size,
        threads=args.threads, clock=args.clock, load=os.getloadavg(),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        command=" ".join(["python", "bench/learning.py", *sys.argv[1:]]), setup=system.description,
    )


def markdown_row(summary: dict) -> str:
    h, s = summary["held_out"], summary["seen"]

    def four(score):
        return " / ".join(f"{score[k]:.2f}" for k in ("colour", "shape", "position", "all"))

    name = summary["system"] + (f" -{summary['ablate']}" if summary["ablate"] else "")
    load = " ".join(f"{x:.1f}" for x in summary["load"])
    return (f"| {summary['date']} | {name} | {summary['size']} | {summary['seed']} | {summary['steps']} | "
            f"{summary['train_minutes']:.1f} | {summary['steps_per_s']:.2f} | {four(h)} | {four(s)} | "
            f"{summary['images_per_s']:.2f} | {load} | `{summary['command']}` |")


MARKDOWN_HEADER = (
    "| date (UTC) | system | px | seed | steps | train min | steps/s | held-out colour / shape / position / all | "
    "seen colour / shape / position / all | sampling images/s | load (1/5/15 min) | command |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
)


# ----------------------------------------------------------------------------------------- plot
CHANCE = {"colour": 1 / 6, "shape": 1 / 3, "position": 1 / 5, "all": 1 / 90}
PALETTE = [(200, 40, 40), (40, 90, 220), (30, 150, 60), (200, 140, 20), (140, 50, 170), (20, 150, 160)]


def plot(results: list[dict], path: Path, x_key: str) -> None:
    """Held-out accuracy curves (colour, shape, position, all: one panel each) per result, as a PNG drawn with PIL."""
    from PIL import Image, ImageDraw

    panels = ("colour", "shape", "position", "all")
    pw, ph, margin = 260, 200, 40
    picture = Image.new("RGB", (len(panels) * (pw + margin) + margin, ph + 2 * margin + 20 * len(results)), "white")
    pen = ImageDraw.Draw(picture)
    x_max = max(p[x_key] for r in results for p in r["curve"]) or 1
    for i, panel in enumerate(panels):
        left, top = margin + i * (pw + margin), margin
        pen.rectangle((left, top, left + pw, top + ph), outline="black")
        pen.text((left, top - 15), f"held-out {panel}", fill="black")
        for level in (0.25, 0.5, 0.75):
            y = top + ph * (1 - level)
            pen.line((left, y, left + pw, y), fill=(220, 220, 220))
            pen.text((left - 28, y - 6), f"{level:.2f}", fill="black")
        chance = top + ph * (1 - CHANCE[panel])
        pen.line((left, chance, left + pw, chance), fill=(160, 160, 160), width=1)
        pen.text((left + pw - 40, chance - 12), "chance", fill=(120, 120, 120))
        pen.text((left, top + ph + 4), "0", fill="black")
        pen.text((left + pw - 40, top + ph + 4), f"{x_max:.0f} {'min' if x_key == 'minutes' else 'steps'}",
                 fill="black")
        for j, result in enumerate(results):
            points = [(left + pw * p[x_key] / x_max, top + ph * (1 - p["held_out"][panel])) for p in result["curve"]]
            colour = PALETTE[j % len(PALETTE)]
            if len(points) > 1:
                pen.line(points, fill=colour, width=2)
            for x, y in points:
                pen.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    for j, result in enumerate(results):
        ablated = f" -{result['ablate']}" if result["ablate"] else ""
        label = f"{result['system']}{ablated} {result['size']} px seed {result['seed']}"
        pen.text((margin, ph + 2 * margin + 20 * j - 10), label, fill=PALETTE[j % len(PALETTE)])
    tmp = path.with_suffix(".tmp.png")
    picture.save(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------- ablation table
def ablation_table(results: list[dict]) -> str:
    """A markdown table of run summaries grouped by choice (the recipe first): held-out colour /
    shape / position / all as the mean over seeds (the seeds' values after it) and the change of
    the mean against the recipe's, with the steps, px and the load the runs took."""
    groups: dict[str, list[dict]] = {}
    for result in results:
        if result["system"] != "recipe":
            raise ValueError(f"ablation_table: a {result['system']!r} run; only recipe runs are compared")
        groups.setdefault(result["ablate"] or "", []).append(result)
    if "" not in groups:
        raise ValueError("ablation_table: no run of the recipe itself (without --ablate) to compare against")
    keys = ("colour", "shape", "position", "all")

    def mean(runs, key):
        return sum(r["held_out"][key] for r in runs) / len(runs)

    def settings(run):  # what the run trained and sampled with, whatever it was called and wherever its T5 lay
        setup = {k: v for k, v in run.get("setup", {}).items() if k not in ("recipe", "ablate")}
        return {**setup, "config": {k: v for k, v in setup.get("config", {}).items() if k != "text_encoder_name"}}

    base = {key: mean(groups[""], key) for key in keys}
    lines = ["| choice switched back | px | steps | seeds | held-out colour | shape | position | all | "
             "steps/s (clock) | load (1 min) |", "| --- | ---: | ---: | --- | --- | --- | --- | --- | ---: | --- |"]
    for choice in ["", *sorted(k for k in groups if k)]:
        runs = sorted(groups[choice], key=lambda r: r["seed"])
        cells = []
        for key in keys:
            each = "/".join(f"{r['held_out'][key]:.2f}" for r in runs)
            change = "" if not choice else f" ({mean(runs, key) - base[key]:+.2f})"
            cells.append(f"{mean(runs, key):.2f}{change} [{each}]")
        loads = [r["load"][0] for r in runs]
        steps = "/".join(str(r["steps"]) for r in runs)
        name = choice or "none (the recipe)"
        if choice and all(settings(r) == settings(groups[""][0]) for r in runs):
            name += f" (the recipe's own settings at {runs[0]['size']} px: no change to measure)"
        clocks = "/".join(sorted({r.get("clock", "wall") for r in runs}))
        lines.append(f"| {name} | {runs[0]['size']} | {steps} "
                     f"| {','.join(str(r['seed']) for r in runs)} | {' | '.join(cells)} | "
                     f"{sum(r['steps_per_s'] for r in runs) / len(runs):.2f} ({clocks}) | "
                     f"{min(loads):.1f}-{max(loads):.1f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and score one system")
    r.add_argument("--system", choices=("seed", "reference", "recipe"), required=True)
    budget = r.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float, help="training budget in minutes of --clock (evaluations not counted)")
    budget.add_argument("--steps", type=int, help="a fixed number of training steps (reproducible probes)")
    r.add_argument("--eval-at", help="comma-separated steps (with --steps) or minutes (with --minutes) at which "
                                     "to score; default: the end (--steps) or thirds of the budget (--minutes)")
    r.add_argument("--ablate", help="recipe only: switch one choice back to the reference's (see "
                                    "imagen.cascade.SmallFastRecipe.ABLATIONS)")
    r.add_argument("--size", type=int, default=32)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--dataset-size", type=int, default=3000)
    r.add_argument("--batch-size", type=int, help="default: the recipe's, 32 for seed/reference")
    r.add_argument("--samples-per-prompt", type=int, default=2)
    r.add_argument("--prompts", type=int, help="score the first N held-out combinations (and N seen); default all 15")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                   help="what --minutes, train minutes, steps/s and images/s count: the process's CPU time "
                        "(default: the same figures on a loaded machine) or wall-clock time")
    r.add_argument("--cosine-decay", action="store_true",
                   help="recipe with --steps: decay the learning rate over the steps (small_fast(total_steps=))")
    r.add_argument("--json", type=Path, help="also write the summary here")
    r.add_argument("--markdown", type=Path, default=HERE / "learning.md", help="append a row here ('-': don't)")
    p = sub.add_parser("plot", help="draw held-out accuracy curves of run summaries (JSON files) as a PNG")
    p.add_argument("results", type=Path, nargs="+")
    p.add_argument("--png", type=Path, default=HERE / "learning_curve.png")
    p.add_argument("--x", choices=("minutes", "steps"), default="minutes")
    t = sub.add_parser("table", help="an ablation table (markdown) of recipe run summaries (JSON files)")
    t.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "table":
        print(ablation_table([json.loads(path.read_text()) for path in args.results]), end="")
        return 0
    if args.command == "plot":
        plot([json.loads(path.read_text()) for path in args.results], args.png, args.x)
        return 0
    if args.ablate and args.system != "recipe":
        parser.error("--ablate applies to --system recipe only")
    summary = run(args)
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    if str(args.markdown) != "-":
        md = args.markdown
        if not md.exists() or "| date (UTC) |" not in md.read_text():
            with md.open("a") as f:
                f.write("\n" + MARKDOWN_HEADER)
        with md.open("a") as f:
            f.write(markdown_row(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
