"""Hypothesis fuzzing of ``ImagenTrainer`` on a tiny cascade (issue 13): drawn constructor keywords
and drawn training inputs either work (a finite loss, an update) or raise our ValueError/TypeError
with a message. The counts are printed at the end (run with ``-s``)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from imagen.cascade import Imagen
from imagen.trainer import ImagenTrainer
from imagen.unets.testing import FuzzOutcomes, fuzz_examples

OUTCOMES = FuzzOutcomes()



BAD = [-1, 0, 10**9, 1.5, math.nan, math.inf, "x", None, (), True, [1, 2]]
TRAINER_KEYWORDS = {
    "lr": [1e-4, 1e-3],
    "eps": [1e-8],
    "beta1": [0.9, 0.5],
    "beta2": [0.99, 0.999],
    "max_grad_norm": [None, 1.0],
    "warmup_steps": [None, 2],
    "cosine_decay_max_steps": [None, 10],
    "only_train_unet_number": [None, 1, 2],
    "use_ema": [True, False],
    "split_valid_fraction": [0.025],
    "max_checkpoints_keep": [20, 1, 0],
    "weight_decay": [0.0, 0.01],
    "seed": [0, 7],
    "max_consecutive_nonfinite": [10, 1],
    "log_every": [10, 1],
    "lr_scheduler": [None, "cosine", "constant"],
    "precision": [None, "no"],
}


def _tiny_cascade():
    from imagen.unets import Unet

    unet = dict(
        dim=8,
        dim_mults=(1, 2),
        num_resnet_blocks=1,
        layer_attns=False,
        layer_cross_attns=False,
        attn_heads=2,
        attn_dim_head=8,
        max_text_len=8,
    )
    torch.manual_seed(0)
    return Imagen(unets=(Unet(**unet), Unet(**unet)), image_sizes=(8, 16), text_embed_dim=16, timesteps=2)


def _valid_or_bad(valid):
    return st.integers(0, 3).flatmap(lambda k: st.sampled_from(BAD) if k == 0 else st.sampled_from(valid))


def _refused(error):
    assert isinstance(error, ValueError | TypeError) and str(error), f"{type(error).__name__}: {error!r}"
    OUTCOMES["refused"] += 1
    event("refused")


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 16, 16, generator=g), torch.randn(2, 4, 16, generator=g)


@settings(max_examples=fuzz_examples(4), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keywords=st.lists(st.sampled_from(sorted(TRAINER_KEYWORDS)), max_size=4, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: _valid_or_bad(TRAINER_KEYWORDS[name]) for name in names})
    )
)
@OUTCOMES.counting
def test_fuzz_trainer_constructor_and_one_step(tmp_path_factory, keywords):
    try:
        trainer = ImagenTrainer(_tiny_cascade(), verbose=False, **keywords)
    except Exception as error:
        _refused(error)
        return
    number = keywords.get("only_train_unet_number") or 2
    images, embeds = _batch()
    loss = trainer(images, text_embeds=embeds, unet_number=number)
    trainer.update(unet_number=number)
    assert math.isfinite(loss)
    OUTCOMES["built and stepped"] += 1
    event("built and stepped")


@pytest.fixture(scope="module")
def trainer():
    return ImagenTrainer(_tiny_cascade(), verbose=False)


def _images(kind):
    images, _ = _batch(1)
    return {
        "float32": images,
        "uint8": (images * 255).to(torch.uint8),
        "float16": images.half(),
        "float64": images.double(),
        "numpy": images.numpy(),
        "numpy uint8": (images.numpy() * 255).astype(np.uint8),
        "nan": images.masked_fill(images > 0.99, math.nan),
        "inf": images.masked_fill(images > 0.99, math.inf),
        "minus one to one": images * 2 - 1,
        "int64": (images * 255).long(),
        "3d": images[0],
        "list": [images[0]],
        "one channel": images[:, :1],
        "tiny": images[..., :4, :4],
        "empty": images[:0],
        "none": None,
    }[kind]


ACCEPTED_IMAGES = ["float32", "uint8", "float16", "numpy", "numpy uint8"]
INPUTS = {  # (valid, bad)
    "images": (
        ACCEPTED_IMAGES,
        ["float64", "nan", "inf", "minus one to one", "int64", "3d", "list", "one channel", "tiny", "empty", "none"],
    ),
    "unet_number": ([1, 2], [0, 3, None, "1", 1.0, True]),
    "max_batch_size": ([None, 1, 2], [0, -1, 1.5, "2"]),
    "text_embeds": (["ok"], ["nan", "wrong width", "none", "wrong batch"]),
}


def _input(name):
    valid, bad = INPUTS[name]
    return st.integers(0, 4).flatmap(lambda k: st.sampled_from(bad) if k == 0 else st.sampled_from(valid))


def _embeds(kind):
    _, embeds = _batch(2)
    return {
        "ok": embeds,
        "nan": embeds.masked_fill(embeds > 1.5, math.nan),
        "wrong width": embeds[..., :7],
        "none": None,
        "wrong batch": embeds[:1],
    }[kind]


@settings(max_examples=fuzz_examples(10), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    images=_input("images"),
    unet_number=_input("unet_number"),
    max_batch_size=_input("max_batch_size"),
    embeds=_input("text_embeds"),
)
@OUTCOMES.counting
def test_fuzz_trainer_inputs(trainer, images, unet_number, max_batch_size, embeds):
    try:
        loss = trainer(
            _images(images), unet_number=unet_number, max_batch_size=max_batch_size, text_embeds=_embeds(embeds)
        )
    except Exception as error:
        _refused(error)
        return
    assert math.isfinite(loss)
    assert images in ACCEPTED_IMAGES, f"{images} images were trained on"
    OUTCOMES["trained"] += 1
    event("trained")


@pytest.mark.parametrize(("name", "value"), [("weight_decay", True), ("lr", math.inf), ("eps", math.nan)])
def test_optimizer_numbers_must_be_finite(name, value):
    # found by the fuzz above: torch's Adam takes weight_decay=True and fails at the first step
    trainer = None
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number, got {value!r}"):
        trainer = ImagenTrainer(_tiny_cascade(), verbose=False, **{name: value})
        images, embeds = _batch()
        trainer(images, text_embeds=embeds, unet_number=1)
        trainer.update(unet_number=1)


def test_fuzz_counts():
    """Prints this module's fuzzing counts (runs last in file order)."""
    assert OUTCOMES.report("trainer") == 0  # every drawn input ended as documented
