"""The named recipes: they build valid cascades, round-trip as JSON, and each ablation puts back one
reference setting without touching the reference's own defaults."""

from __future__ import annotations

import attrs
import pytest
import torch
from cascade_testing import randomize_cascade_

from imagen.cascade import (
    PRESETS,
    CascadeConfig,
    ElucidatedImagen,
    ElucidatedImagenConfig,
    ImagenConfig,
    preset,
    preset_config,
    small_fast,
)


@pytest.mark.parametrize("sizes", [16, 32, 64, (16, 32)])
def test_small_fast_builds_and_samples_every_size(sizes):
    recipe = small_fast(sizes, text_embed_dim=8)
    assert CascadeConfig.from_json(recipe.config.to_json()) == recipe.config
    imagen = randomize_cascade_(recipe.config.create(seed=0))
    assert isinstance(imagen, ElucidatedImagen)
    base = sizes if isinstance(sizes, int) else sizes[0]
    assert imagen.unets[0].downsample_factor == base // 8  # the base U-Net halves down to 8 px
    assert imagen.unets[0].memory_efficient == (base > 16)  # above 16 px, once before its first level
    assert imagen.unets[0].coordinate_channels == (base > 16)  # the demo's 16 px base stage: unchanged
    embeds, masks = torch.randn(2, 3, 8), torch.tensor([[True, True, False]] * 2)
    images = imagen.sample(text_embeds=embeds, text_masks=masks, cond_scale=recipe.sample_options["cond_scale"],
                           steps=2, generator=0, use_tqdm=False)
    top = sizes if isinstance(sizes, int) else sizes[-1]
    assert images.shape == (2, 3, top, top) and torch.isfinite(images).all()


def test_the_base_stages_training_noise_is_shifted_by_the_log_of_its_size_over_16_px():
    import math

    assert small_fast(16).config.P_mean == (-1.2,)  # EDM's at 16 px: the demo's base stage
    assert small_fast((32, 64)).config.P_mean == pytest.approx((-1.2 + math.log(2), -1.2))
    assert small_fast(64).config.P_mean == pytest.approx((-1.2 + math.log(4),))
    assert small_fast(32).with_reference("noise_levels").config.P_mean == -1.2


def test_max_text_len_reaches_every_unet_and_the_text_padding_ablation_restores_the_reference():
    recipe = small_fast((16, 32), text_embed_dim=8, max_text_len=16)
    assert [unet["max_text_len"] for unet in recipe.config.unets] == [16, 16]
    imagen = recipe.config.create(seed=0)
    assert all(unet.max_text_len == 16 for unet in imagen.unets)
    reference = recipe.with_reference("text_padding").config.unets[0]
    assert reference["max_text_len"] == 256 and reference["mask_text_padding"] is False
    assert "max_text_len" not in small_fast(32).config.unets[0]  # default: the U-Net's own


@pytest.mark.parametrize(("size", "choice"), [(size, choice) for size in (16, 32)
                                              for choice in sorted(small_fast(size).reference)])
def test_each_ablation_changes_only_its_choice(size, choice):
    recipe = small_fast(size, text_embed_dim=8, total_steps=100)
    ablated = recipe.with_reference(choice)
    differs = {
        "config": ablated.config != recipe.config, "trainer": ablated.trainer_options != recipe.trainer_options,
        "sample": ablated.sample_options != recipe.sample_options,
    }
    expected = {"lr": "trainer", "warmup": "trainer", "ema": "trainer", "guidance": "sample"}.get(choice, "config")
    assert differs == {k: k == expected for k in differs}
    ablated.config.create(seed=0)  # still a valid cascade


def test_the_choices_made_only_above_16_px_are_not_offered_at_16_px():
    assert {"coordinates", "noise_levels"} <= set(small_fast(32).reference)
    assert {"coordinates", "noise_levels"}.isdisjoint(small_fast(16).reference)
    with pytest.raises(ValueError, match="unknown choice 'coordinates'"):
        small_fast(16).with_reference("coordinates")


def test_ablations_put_back_the_reference_settings():
    recipe = small_fast(32, text_embed_dim=8, total_steps=100)
    assert isinstance(recipe.with_reference("objective").config, ImagenConfig)
    assert recipe.with_reference("lr").trainer_options["lr"] == 1e-4
    assert "cosine_decay_max_steps" not in small_fast(32).trainer_options
    assert recipe.with_reference("cond_drop").config.cond_drop_prob == ElucidatedImagenConfig(
        unets=[{"dim": 8, "dim_mults": [1]}], image_sizes=32).cond_drop_prob
    assert recipe.with_reference("sampler").config.sampler is None
    assert recipe.with_reference("text_padding").config.unets[0]["mask_text_padding"] is False
    assert recipe.with_reference("block_norm").config.unets[0]["block_norm"] == "rms"
    assert recipe.with_reference("coordinates").config.unets[0]["coordinate_channels"] is False
    assert recipe.with_reference("guidance").sample_options["cond_scale"] == 1.0


def test_recipes_leave_reference_defaults_alone():
    def defaults():
        return {cls: {k: v.default for k, v in attrs.fields_dict(cls).items()}
                for cls in (ElucidatedImagenConfig, ImagenConfig)}

    before = defaults()
    small_fast(32).with_reference("objective")
    assert defaults() == before
    assert before[ElucidatedImagenConfig]["cond_drop_prob"] == 0.5 and before[ImagenConfig]["sampler"] is None


def test_preset_lookup_and_errors():
    assert set(PRESETS) == {"small-fast"}
    assert preset("small-fast", 32, text_embed_dim=8).config == small_fast(32, text_embed_dim=8).config
    assert preset_config(ElucidatedImagenConfig, "small-fast", 16) == small_fast(16).config
    with pytest.raises(ValueError, match="not a ImagenConfig"):
        preset_config(ImagenConfig, "small-fast", 16)
    with pytest.raises(ValueError, match=r"unknown preset .fast.; expected one of \[.small-fast.\]"):
        preset("fast")
    with pytest.raises(ValueError, match="image_sizes\\[0\\] must be a power of two >= 8, got 24"):
        small_fast(24)
    with pytest.raises(ValueError, match="image_sizes must be one or two ints"):
        small_fast((16, 32, 64))
    with pytest.raises(ValueError, match="total_steps must be None or an int >= 1, got 0"):
        small_fast(32, total_steps=0)
    with pytest.raises(ValueError, match="unknown choice 'speed'"):
        small_fast(32).with_reference("speed")
