"""Hypothesis fuzzing of the cascade's public constructors, configs and ``sample()`` keywords
(issue 13): every drawn input either works or raises our ValueError/TypeError with a message.
The counts are printed at the end (run with ``-s``)."""

import json
import math

import pytest
import torch
from cascade_testing import randomize_cascade_, tiny_unet
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from imagen.cascade import CascadeConfig, ElucidatedImagen, ElucidatedImagenConfig, Imagen, ImagenConfig
from imagen.unets import NullUnet
from imagen.unets.testing import FuzzOutcomes, fuzz_examples

BAD = [-1, 0, 10**9, 2**70, 1.5, math.nan, math.inf, -math.inf, "x", None, (), (1, 2, 3), True, {"a": 1}]
OUTCOMES = FuzzOutcomes()



SETTINGS = {
    "image_sizes": [(8, 16)],
    "timesteps": [2, (2, 3)],
    "cond_drop_prob": [0.1, 0.0, 1.0],
    "channels": [3, 1],
    "lowres_sample_noise_level": [0.2, 0.0],
    "condition_on_text": [True, False],
    "auto_normalize_img": [True, False],
    "dynamic_thresholding": [True, (True, False)],
    "noise_schedules": ["cosine", ("linear", "cosine")],
    "pred_objectives": ["noise", "v", ("x_start", "noise")],
    "loss_type": ["l1", "huber"],
    "min_snr_gamma": [5.0, 1],
    "random_crop_sizes": [None, (None, 8)],
    "resize_mode": ["nearest", "bilinear"],
    "sampler": [None, "ddim"],
    "only_train_unet_number": [None, 2],
    "per_sample_random_aug_noise_level": [False, True],
    "text_embed_dim": [16, None],
}
ELUCIDATED = {
    "num_sample_steps": [2, (3, 2)],
    "sigma_min": [0.002],
    "sigma_max": [80.0, 10],
    "rho": [7.0],
    "P_mean": [-1.2],
    "P_std": [1.2],
    "S_churn": [0.0, 80.0],
    "S_noise": [1.003],
}


def drawn(table):
    return st.lists(st.sampled_from(sorted(table)), max_size=5, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: _valid_or_bad(table[name]) for name in names})
    )


def _valid_or_bad(valid: list):
    """A valid value three times in four, else a bad one."""
    return st.integers(0, 3).flatmap(lambda k: st.sampled_from(BAD) if k == 0 else st.sampled_from(valid))


def _refused(error: Exception) -> None:
    assert isinstance(error, ValueError | TypeError) and str(error), f"{type(error).__name__}: {error!r}"
    OUTCOMES["refused"] += 1
    event("refused")


@pytest.mark.parametrize("cls", [Imagen, ElucidatedImagen])
@settings(max_examples=fuzz_examples(6), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@OUTCOMES.counting
def test_fuzz_cascade_constructors_and_a_training_step(cls, data):
    table = {**SETTINGS, **(ELUCIDATED if cls is ElucidatedImagen else {})}
    table.pop("timesteps" if cls is ElucidatedImagen else "num_sample_steps", None)
    for name in ("noise_schedules", "pred_objectives", "loss_type", "min_snr_gamma"):
        if cls is ElucidatedImagen:
            table.pop(name)
    chosen = {"image_sizes": (8, 16), "text_embed_dim": 16, **data.draw(drawn(table))}
    unets = [tiny_unet(), tiny_unet(seed=1)] if data.draw(st.booleans()) else [NullUnet(), tiny_unet(seed=1)]
    try:
        cascade = cls(unets=unets, **chosen)
    except Exception as error:
        _refused(error)
        return
    number = 2
    images = torch.rand(2, cascade.channels, 16, 16, generator=torch.Generator().manual_seed(0))
    if not cascade._config.auto_normalize_img:
        images = images * 2 - 1
    embeds = torch.randn(2, 4, cascade.text_embed_dim or 16) if cascade.condition_on_text else None
    loss = cascade(images, unet_number=number, text_embeds=embeds, generator=torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert type(cascade.config).from_json(cascade.config.to_json()) == cascade.config
    OUTCOMES["built and trained"] += 1
    event("built and trained")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=fuzz_examples(30), deadline=None)
@given(
    kind=st.sampled_from(["Imagen", "ElucidatedImagen", "Other"]),
    fields=st.dictionaries(
        st.sampled_from(sorted({**SETTINGS, **ELUCIDATED, "unets": 0, "video": 0})), JSON_VALUES, max_size=4
    ),
)
@OUTCOMES.counting
def test_fuzz_config_json(kind, fields):
    data = {"kind": kind, "unets": [{"dim": 8, "dim_mults": [1, 2]}], "image_sizes": [8], **fields}
    try:
        config = CascadeConfig.from_json(json.dumps(data))
    except Exception as error:
        _refused(error)
        return
    assert CascadeConfig.from_json(config.to_json()) == config
    assert isinstance(config, ImagenConfig | ElucidatedImagenConfig)
    OUTCOMES["config accepted"] += 1


@pytest.fixture(scope="module")
def cascade():
    imagen = Imagen(unets=(tiny_unet(), tiny_unet(seed=1)), image_sizes=(8, 16), text_embed_dim=16, timesteps=3)
    return randomize_cascade_(imagen).eval()


def _pixels(seed=0, size=16, batch=2):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


_nan_pixels = _pixels().clone()
_nan_pixels[0, 0, 0, 0] = math.nan
SAMPLE_KEYWORDS = {
    "cond_scale": [1.0, 3.0, (1.0, 2.0), math.inf, math.nan, -1.0, "3", (1.0,)],
    "steps": [None, 2, (2, 3), 0, -1, 1.5, "2", 10**9],
    "sampler": [None, "ddim", "euler", "dpmpp_2m", "unipc", "nonsense", 3],
    "skip_steps": [None, 0, 1, (0, 1), -1, 9, "1"],
    "lowres_sample_noise_level": [None, 0.1, math.nan, math.inf, -0.5, 2.0],
    "schedule": [None, "karras", "time", "bogus"],
    "batch_size": [1, 2, 0, -1, 2.5, 10**9],
    "generator": [None, 0, 7, -1, "seed", 2**70],
    "init_images": [None, _pixels(3), (None, _pixels(4)), _nan_pixels, _pixels(5) * 3, _pixels(6).double()],
    "stop_at_unet_number": [None, 1, 2, 0, 3, "2"],
    "start_at_unet_number": [1, 2, 0, 5],
    "start_image_or_video": [None, _pixels(7, size=8)],
    "return_all_unet_outputs": [False, True],
    "dynamic_threshold": [None],
}
SAMPLE_KEYWORDS.pop("dynamic_threshold")


@settings(max_examples=fuzz_examples(15), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keywords=st.lists(st.sampled_from(sorted(SAMPLE_KEYWORDS)), max_size=4, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: st.sampled_from(SAMPLE_KEYWORDS[name]) for name in names})
    )
)
@OUTCOMES.counting
def test_fuzz_sample_keywords(cascade, keywords):
    embeds = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(2))
    try:
        out = cascade.sample(text_embeds=embeds, use_tqdm=False, **keywords)
    except Exception as error:
        _refused(error)
        return
    outputs = out if isinstance(out, list) else [out]
    for images in outputs:
        assert images.shape[:2] == (2, 3) and torch.isfinite(images).all() and 0 <= images.min() <= images.max() <= 1
    OUTCOMES["sampled"] += 1
    event("sampled")


def test_fuzz_counts():
    """Prints this module's fuzzing counts (runs last in file order)."""
    assert OUTCOMES.report("cascade") == 0  # every drawn input ended as documented
