"""Named LR schedules from transformers.get_scheduler beside the reference's warm-up x cosine."""

import math

import pytest
import torch

from imagen.trainer import ImagenTrainer, WarmupCosine


def lrs_over(trainer, steps):
    """The learning rate in force at each of ``steps`` optimizer steps."""
    trainer.add_train_dataloader(torch.utils.data.DataLoader(torch.rand(8, 3, 4, 4), batch_size=2))
    seen = []
    for _ in range(steps):
        seen.append(trainer.get_lr(1))
        trainer.train_step(1)
    return seen


def linear(step, warmup=2, total=6):
    return step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup))


def cosine(step, warmup=2, total=6):
    if step < warmup:
        return step / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize(("name", "factor"), [("linear", linear), ("cosine", cosine),
                                              ("constant_with_warmup", lambda s: min(1.0, s / 2))])
def test_named_schedules_follow_their_closed_forms(toy_cascade, name, factor):
    trainer = ImagenTrainer(toy_cascade(num_unets=1), lr=0.1, warmup_steps=2, cosine_decay_max_steps=6,
                            lr_scheduler=name, verbose=False)
    assert lrs_over(trainer, 7) == pytest.approx([0.1 * factor(s) for s in range(7)], abs=1e-12)


def test_the_default_stays_the_references_warmup_times_cosine(toy_cascade):
    trainer = ImagenTrainer(toy_cascade(num_unets=1), lr=0.1, warmup_steps=2, cosine_decay_max_steps=6, verbose=False)
    schedule = WarmupCosine(2, 6)
    assert lrs_over(trainer, 7) == pytest.approx([0.1 * schedule(s) for s in range(7)], abs=1e-12)


def test_a_named_schedule_resumes_where_it_stopped(tmp_path, toy_cascade):
    options = dict(lr=0.1, warmup_steps=2, cosine_decay_max_steps=6, lr_scheduler="linear", verbose=False)
    straight = ImagenTrainer(toy_cascade(num_unets=1), **options)
    expected = lrs_over(straight, 5)
    first = ImagenTrainer(toy_cascade(num_unets=1), **options)
    lrs_over(first, 3)
    first.save(tmp_path / "ckpt.safetensors")
    resumed = ImagenTrainer(toy_cascade(num_unets=1), **options)
    resumed.load(tmp_path / "ckpt.safetensors")
    assert lrs_over(resumed, 2) == pytest.approx(expected[3:])


def test_per_unet_schedules(toy_cascade):
    trainer = ImagenTrainer(toy_cascade(num_unets=2), lr=0.1, warmup_steps=2, cosine_decay_max_steps=6,
                            lr_scheduler=(None, "constant"), verbose=False)
    assert isinstance(trainer.schedulers[0].lr_lambdas[0], WarmupCosine)
    assert trainer.get_lr(2) == 0.1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(lr_scheduler="nope"), ValueError, "lr_scheduler must be None .* or one of"),
        (dict(lr_scheduler="reduce_lr_on_plateau"), ValueError, "lr_scheduler"),
        (dict(lr_scheduler="linear", warmup_steps=2), ValueError, "needs cosine_decay_max_steps"),
        (dict(lr_scheduler_kwargs={"num_cycles": 2}), ValueError, "need a named lr_scheduler"),
        (dict(lr_scheduler="linear", cosine_decay_max_steps=6, lr_scheduler_kwargs={"bogus": 1}), TypeError, "bogus"),
    ],
)
def test_bad_schedules_are_refused_naming_the_parameter(toy_cascade, kwargs, error, match):
    with pytest.raises(error, match=match):
        ImagenTrainer(toy_cascade(num_unets=1), verbose=False, **kwargs)
