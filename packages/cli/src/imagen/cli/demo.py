"""The demo: from nothing to a trained two-stage cascade that draws what the text says, on a CPU.

It writes the built-in shapes dataset, builds a tiny T5 from the captions' words, precomputes the
caption embeddings, trains a base stage (16 px) and a super-resolution stage (16 -> 32 px) through
``ImagenTrainer``, samples the held-out prompts (colour x shape x position combinations never seen
together in training), writes a grid PNG and the checkpoint, and scores colour and position.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import attrs
import torch
from tqdm.auto import tqdm

from imagen.cascade import CascadeConfig, Recipe, small_fast
from imagen.text import T5Encoder, TextEmbeddingCache
from imagen.text.testing import build_tiny_t5
from imagen.trainer import Dataset, ImagenTrainer, save_image_grid

from . import shapes

logger = logging.getLogger(__name__)

BASE_SIZE, SR_SIZE = 16, 32
TEXT_DIM = 32
TEXT_LEN = 16  # text tokens the U-Nets keep: a caption is at most 8 words (and the end token)


def demo_recipe(text_encoder_name: str, *, text_embed_dim: int | None = TEXT_DIM) -> Recipe:
    """The demo's recipe: ``small_fast`` with a 16 px base stage and a 16 -> 32 px super-resolution
    stage (the one fast path: the demo trains and samples with the recipe's settings)."""
    return small_fast((BASE_SIZE, SR_SIZE), text_embed_dim=text_embed_dim, text_encoder_name=text_encoder_name,
                      max_text_len=TEXT_LEN)


def demo_cascade_config(text_encoder_name: str, *, text_embed_dim: int | None = TEXT_DIM) -> dict:
    """The demo's cascade config as a dict (``CascadeConfig.from_dict`` builds it): the
    ``small_fast`` recipe's cascade (:func:`demo_recipe`), an EDM base U-Net at 16 px with
    cross-attention to the text at 8 px and no self-attention, and a small super-resolution U-Net
    16 -> 32 px without attention.

    Both U-Nets hide the text padding (``mask_text_padding=True``, not the reference's default):
    the captions have at most 8 words, so with the reference's behaviour the null-embedding
    positions of the padding would dominate the mean-pooled text and the cross-attention. They keep
    ``TEXT_LEN`` = 16 text positions instead of 256 (the captions fit), which halves a training step."""
    return demo_recipe(text_encoder_name, text_embed_dim=text_embed_dim).config.to_dict()


_RECIPE = small_fast((BASE_SIZE, SR_SIZE), max_text_len=TEXT_LEN)  # the defaults of DemoSettings come from it


@attrs.frozen(kw_only=True)
class DemoSettings:
    """What the demo does. ``minutes`` is the training time budget (split between the stages by
    ``base_share``); ``steps`` (when given) replaces it with a fixed number of base steps (the SR
    stage gets ``sr_steps_ratio`` of them), which makes the run reproducible."""

    output_dir: Path = attrs.field(converter=Path)
    minutes: float | None = 8.0
    steps: int | None = None
    seed: int = 0
    dataset_size: int = 3000
    batch_size: int = _RECIPE.batch_size
    lr: float = _RECIPE.trainer_options["lr"]
    warmup_steps: int = _RECIPE.trainer_options["warmup_steps"]
    base_share: float = 0.75
    sr_steps_ratio: float = 0.5
    samples_per_prompt: int = 4
    prompts: int | None = None
    sample_steps: tuple[int, int] = (16, 8)
    cond_scale: float = _RECIPE.sample_options["cond_scale"]
    sr_cond_scale: float = 1.0
    sr_skip_steps: int = 4
    sr_noise_level: float = 0.1
    progress: bool = True
    threads: int | None = None


class ThreadTuner:
    """Keeps the faster of two torch thread counts while training.

    On a machine whose cores are shared, OpenMP's spinning threads make every parallel region wait
    for a thread that is not scheduled: one thread can then be ten times faster than two, while on
    idle cores two are faster. Every ``period`` steps the other count is timed for ``window`` steps
    (median step time) and the faster one is kept.
    """

    def __init__(self, *, enabled: bool = True, window: int = 8, period: int = 100):
        self.counts = sorted({torch.get_num_threads(), 1}, reverse=True)
        self.enabled = enabled and len(self.counts) > 1
        self.window, self.period = window, period
        self.median: dict[int, float] = {}
        self.times: list[float] = []
        self.since_probe, self.probing = 0, False

    def record(self, seconds: float) -> None:
        """Records one step's duration; may change ``torch.set_num_threads``."""
        if not self.enabled:
            return
        self.times.append(seconds)
        if len(self.times) < self.window:
            return
        current = torch.get_num_threads()
        self.median[current] = sorted(self.times)[len(self.times) // 2]
        self.times = []
        if self.probing:  # the other count was just timed: keep the faster
            torch.set_num_threads(min(self.median, key=self.median.get))
            self.probing, self.since_probe = False, 0
            return
        self.since_probe += self.window
        if len(self.median) < len(self.counts) or self.since_probe >= self.period:
            torch.set_num_threads(next(c for c in self.counts if c != current))
            self.probing = True


def _train_stage(trainer: ImagenTrainer, unet_number: int, *, steps: int | None, seconds: float | None,
                 progress: bool, tune_threads: bool = True) -> tuple[int, float]:
    """Trains one stage for ``steps`` steps or until ``seconds`` pass; returns (steps, last loss EMA)."""
    total = steps if steps is not None else None
    bar = tqdm(total=total, disable=not progress, desc=f"train unet {unet_number}", unit="step")
    start, done, smooth = time.monotonic(), 0, math.nan
    tuner = ThreadTuner(enabled=tune_threads)
    while True:
        if steps is not None and done >= steps:
            break
        if seconds is not None and time.monotonic() - start >= seconds:
            break
        began = time.monotonic()
        loss = trainer.train_step(unet_number)
        tuner.record(time.monotonic() - began)
        smooth = loss if math.isnan(smooth) else 0.95 * smooth + 0.05 * loss
        done += 1
        bar.update(1)
        bar.set_postfix(loss=f"{smooth:.4f}", threads=torch.get_num_threads())
    bar.close()
    return done, smooth


def held_out_prompts(limit: int | None = None) -> list[tuple[str, str, str]]:
    """The held-out (colour, shape, position) triples, the first ``limit`` of them if given."""
    prompts = shapes.held_out_prompts()
    return prompts if limit is None else prompts[:limit]


def sample_two_stages(sampler, embeds: torch.Tensor, masks: torch.Tensor, settings: DemoSettings):
    """Samples both stages in one call: the base stage with guidance ``cond_scale``, then the
    super-resolution stage refining the upsampled base image from step ``sr_skip_steps`` of its
    ``sample_steps[1]`` (``refine_from_step``: it sharpens the picture rather than redrawing it),
    with ``sr_cond_scale``.

    ``sampler`` is an ``ImagenTrainer`` (samples through the EMA weights) or a cascade; ``embeds``
    (B, L, D) and ``masks`` (B, L) are the prompts' text embeddings. Returns (base (B, 3, 16, 16),
    super-resolved (B, 3, 32, 32)) in [0, 1] on the CPU.
    """
    base, sr = sampler.sample(
        text_embeds=embeds, text_masks=masks, generator=settings.seed, use_tqdm=settings.progress,
        cond_scale=(settings.cond_scale, settings.sr_cond_scale), steps=settings.sample_steps,
        refine_from_step=(None, settings.sr_skip_steps or None), lowres_sample_noise_level=settings.sr_noise_level,
        return_all_unet_outputs=True,
    )
    return base.float().cpu(), sr.float().cpu()


def run_demo(settings: DemoSettings) -> dict:
    """Runs the demo; returns a summary dict (scores, steps, seconds, paths)."""
    started = time.monotonic()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out = settings.output_dir
    out.mkdir(parents=True, exist_ok=True)
    data, t5_folder, cache_folder = out / "data", out / "tiny-t5", out / "text-cache"

    if not any(data.glob("*.png")):
        logger.info("writing %d training images to %s", settings.dataset_size, data)
        shapes.write_dataset(data, settings.dataset_size, SR_SIZE, seed=settings.seed)
    if not (t5_folder / "config.json").is_file():
        build_tiny_t5(t5_folder, words=shapes.vocabulary(), d_model=TEXT_DIM, seed=settings.seed)
    encoder = T5Encoder(t5_folder)
    dataset_probe = Dataset(data, image_size=SR_SIZE)
    TextEmbeddingCache.build(cache_folder, dataset_probe.captions, encoder, overwrite=True)
    cache = TextEmbeddingCache(cache_folder)
    # no flips: the captions name left and right
    dataset = Dataset(data, image_size=SR_SIZE, text_embedding_cache=cache, augment_horizontal_flip=False)

    config = CascadeConfig.from_dict(demo_cascade_config(str(t5_folder.resolve())))
    imagen = config.create(seed=settings.seed)
    options = {**_RECIPE.trainer_options, "lr": settings.lr, "warmup_steps": settings.warmup_steps}
    trainer = ImagenTrainer(imagen, **options, seed=settings.seed, verbose=settings.progress)
    trainer.add_train_dataset(dataset, batch_size=settings.batch_size)
    prep_seconds = time.monotonic() - started

    if settings.steps is not None:
        budgets = [dict(steps=settings.steps, seconds=None),
                   dict(steps=max(1, round(settings.steps * settings.sr_steps_ratio)), seconds=None)]
    else:
        train_seconds = settings.minutes * 60
        budgets = [dict(steps=None, seconds=train_seconds * settings.base_share),
                   dict(steps=None, seconds=train_seconds * (1 - settings.base_share))]
    steps_done, losses = [], []
    for unet_number, budget in enumerate(budgets, start=1):
        n, loss = _train_stage(trainer, unet_number, progress=settings.progress,
                               tune_threads=settings.threads is None, **budget)
        steps_done.append(n)
        losses.append(loss)
    train_seconds = time.monotonic() - started - prep_seconds

    checkpoint = out / "checkpoint.pt"
    trainer.save(checkpoint)

    triples = held_out_prompts(settings.prompts)
    k = settings.samples_per_prompt
    prompts = [shapes.caption(*t) for t in triples for _ in range(k)]
    expanded = [t for t in triples for _ in range(k)]
    sample_start = time.monotonic()
    embeds, masks = encoder.encode(prompts)
    base_images, sr_images = sample_two_stages(trainer, embeds, masks, settings)
    sample_seconds = time.monotonic() - sample_start
    save_image_grid(sr_images, out / "samples.png", columns=k, padding=1)  # the one grid writer
    scores = {"base": shapes.score(base_images, expanded), "sr": shapes.score(sr_images, expanded)}
    return dict(
        scores=scores, steps=steps_done, losses=losses, prep_seconds=prep_seconds, train_seconds=train_seconds,
        sample_seconds=sample_seconds, total_seconds=time.monotonic() - started, checkpoint=str(checkpoint),
        grid=str(out / "samples.png"), samples=len(prompts), threads=torch.get_num_threads(),
        pid=os.getpid(),
    )
