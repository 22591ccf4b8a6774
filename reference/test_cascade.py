"""Imagen and ElucidatedImagen equal imagen-pytorch 2.1.0's, given the same weights and random draws.

Both cascades are built from the same keywords with the same U-Net keywords; the reference's
U-Nets are randomised (seeded) and ours load their state dicts strictly. Every random draw of
either side comes from one seeded tape: ``torch.randn`` / ``torch.randn_like`` / ``torch.rand``
are replaced while a side runs (our library draws through them when no generator is given), and
the reference's uniform draws that do not go through them (``sample_random_times``,
``prob_mask_like``, the self-conditioning coin ``random()``) are patched to read the same tape.
The shapes drawn are recorded: both sides must draw the same sequence, so a difference in the
order of the draws fails loudly rather than as a numeric mismatch.

Checked: (a) the training loss of each stage of both kinds of cascade; (b) one ancestral step of a
Gaussian stage; (c) whole two-stage samples (Imagen with timesteps=(4, 3), ElucidatedImagen with
num_sample_steps=(3, 2)), with and without per-unet guidance, self-conditioning in stage 2, and
Imagen's inpainting. Tolerance 1e-5 absolute in float32.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from imagen_pytorch import elucidated_imagen as ref_elucidated
from imagen_pytorch import imagen_pytorch as ref_module
from imagen_pytorch import imagen_video as ref_video
from ref_testing import assert_close, load_same_weights, randomize_

import imagen.cascade as ours
from imagen.diffusion import get_noise_schedule, sample_vp_ddpm
from imagen.unets import Unet

BATCH, TEXT_DIM, TEXT_LEN = 2, 12, 5
UNET = dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True),
            layer_cross_attns=(False, True), attn_heads=2, attn_dim_head=8, cond_dim=16,
            text_embed_dim=TEXT_DIM, max_text_len=TEXT_LEN)
SECOND = dict(UNET, self_cond=True)
OUTPUT_SCALE = 0.005  # final conv weights after randomize_ (as reference/test_unet.py), outputs of order 0.1-1

_randn, _randn_like, _rand = torch.randn, torch.randn_like, torch.rand


class Tape:
    """Seeded draws handed out in call order; ``shapes`` records what was drawn."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.shapes: list[tuple[str, tuple]] = []

    def normal(self, shape, dtype=None) -> torch.Tensor:
        shape = tuple(shape)
        self.shapes.append(("normal", shape))
        return _randn(shape, generator=self.generator).to(dtype or torch.float32)

    def uniform(self, shape) -> torch.Tensor:
        shape = tuple(shape)
        self.shapes.append(("uniform", shape))
        return _rand(shape, generator=self.generator)


def _shape(size) -> tuple:
    return tuple(size[0]) if len(size) == 1 and isinstance(size[0], tuple | list | torch.Size) else tuple(size)


@contextlib.contextmanager
def drawing_from(tape: Tape, monkeypatch):
    """Every draw of either library, while inside, comes from ``tape``."""
    with monkeypatch.context() as patch:
        patch.setattr(torch, "randn", lambda *size, device=None, dtype=None, **_: tape.normal(_shape(size), dtype))
        patch.setattr(torch, "randn_like", lambda x, **_: tape.normal(x.shape, x.dtype).to(x.device))
        patch.setattr(torch, "rand", lambda *size, device=None, dtype=None, **_: tape.uniform(_shape(size)))
        patch.setattr(ref_module.GaussianDiffusionContinuousTimes, "sample_random_times",
                      lambda self, batch_size, *, device: tape.uniform((batch_size,)))

        def prob_mask_like(shape, prob, device):
            if prob in (0, 1):
                return torch.full(shape, bool(prob), device=device)
            return tape.uniform(shape) < prob

        patch.setattr(ref_module, "prob_mask_like", prob_mask_like)
        patch.setattr(ref_video, "prob_mask_like", prob_mask_like)  # Unet3D's conditioning dropout
        patch.setattr(ref_module, "random", lambda: float(tape.uniform(())))
        patch.setattr(ref_elucidated, "random", lambda: float(tape.uniform(())))
        yield


def run_both(seed, monkeypatch, reference_call, our_call):
    """Runs each side on a fresh tape of the same seed; both must draw the same shapes."""
    ref_tape, our_tape = Tape(seed), Tape(seed)
    with drawing_from(ref_tape, monkeypatch):
        expected = reference_call()
    with drawing_from(our_tape, monkeypatch):
        got = our_call()
    assert our_tape.shapes == ref_tape.shapes
    return got, expected


def cascades(kind: str, **settings):
    """(ours, reference): the same cascade keywords, the reference's weights randomised and loaded into ours."""
    ref_class = ref_module.Imagen if kind == "Imagen" else ref_elucidated.ElucidatedImagen
    our_class = ours.Imagen if kind == "Imagen" else ours.ElucidatedImagen
    keywords = {"image_sizes": (8, 16), "text_embed_dim": TEXT_DIM, "cond_drop_prob": 0.5, **settings}
    reference = ref_class(unets=(ref_module.Unet(**UNET), ref_module.Unet(**SECOND)), **keywords)
    randomize_(reference, seed=3)
    with torch.no_grad():
        for unet in reference.unets:
            unet.final_conv.weight.mul_(OUTPUT_SCALE / 0.2)
    mine = our_class(unets=(Unet(**UNET), Unet(**SECOND)), **keywords)
    load_same_weights(mine, reference)
    return mine.eval(), reference.eval()


def text_condition(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    embeds = _randn(BATCH, TEXT_LEN, TEXT_DIM, generator=generator)
    masks = torch.ones(BATCH, TEXT_LEN, dtype=torch.bool)
    masks[1, 3:] = False
    return embeds * masks[..., None], masks


# ---------------------------------------------------------------------------------------- (a)


TRAINING_SETTINGS = {
    "Imagen": [
        dict(),  # noise objective, min-SNR, cosine schedules
        dict(pred_objectives=("x_start", "noise"), noise_schedules="linear", min_snr_loss_weight=False),
        dict(pred_objectives=("v", "noise"), loss_type="l1", min_snr_gamma=2, per_sample_random_aug_noise_level=True),
        dict(loss_type="huber", lowres_noise_schedule="cosine", cond_drop_prob=1.0),
    ],
    "ElucidatedImagen": [
        dict(),
        dict(P_mean=-0.5, P_std=0.8, sigma_data=0.7, per_sample_random_aug_noise_level=True),
    ],
}


@pytest.mark.parametrize(("kind", "settings"), [(k, s) for k, cases in TRAINING_SETTINGS.items() for s in cases])
@pytest.mark.parametrize("unet_number", [1, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_training_loss_equals_the_reference(kind, settings, unet_number, seed, monkeypatch):
    """Stage 2 self-conditions (the reference's coin decides, from the tape) and is a super-resolution
    stage (low-res image at stage 1's size, noised with augmentation); v is only trained on stage 1,
    where there is no self-conditioning (see the note in the cascade README)."""
    mine, reference = cascades(kind, **settings)
    images = _rand(BATCH, 3, 20, 20, generator=torch.Generator().manual_seed(seed))
    embeds, masks = text_condition(seed)
    kwargs = dict(text_embeds=embeds, text_masks=masks, unet_number=unet_number)
    got, expected = run_both(seed, monkeypatch, lambda: reference(images, **kwargs), lambda: mine(images, **kwargs))
    assert_close(got, expected)


@pytest.mark.parametrize("kind", ["Imagen", "ElucidatedImagen"])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_crops_train_as_the_reference(kind, seed, monkeypatch):
    """``random_crop_sizes``: one window per sample, drawn as kornia's RandomCrop draws it (its
    uniforms come from the tape through ``torch.rand``), applied to the image, its low-res copy and
    (Gaussian stages) the noise drawn whole, in the reference's order of draws."""
    mine, reference = cascades(kind, random_crop_sizes=(None, 8))
    images = _rand(BATCH, 3, 20, 20, generator=torch.Generator().manual_seed(seed))
    embeds, masks = text_condition(seed)
    kwargs = dict(text_embeds=embeds, text_masks=masks, unet_number=2)
    got, expected = run_both(seed, monkeypatch, lambda: reference(images, **kwargs), lambda: mine(images, **kwargs))
    assert_close(got, expected)


def test_uint8_images_train_as_the_reference(monkeypatch):
    mine, reference = cascades("Imagen")
    images = (_rand(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 255).to(torch.uint8)
    embeds, masks = text_condition()
    kwargs = dict(text_embeds=embeds, text_masks=masks, unet_number=2)
    got, expected = run_both(4, monkeypatch, lambda: reference(images, **kwargs), lambda: mine(images, **kwargs))
    assert_close(got, expected)


# ---------------------------------------------------------------------------------------- (b)


def test_one_ancestral_step_equals_the_reference_p_sample(monkeypatch):
    mine, reference = cascades("Imagen", timesteps=(4, 3))
    embeds, masks = text_condition()
    z = _randn(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    lowres = _rand(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(6)) * 2 - 1
    lowres_times = torch.full((BATCH,), 0.2)
    t, t_next = torch.full((BATCH,), 0.6), torch.full((BATCH,), 0.4)

    def reference_step():
        return reference.p_sample(
            reference.unets[1], z, t, t_next=t_next, noise_scheduler=reference.noise_schedulers[1],
            text_embeds=embeds, text_mask=masks, cond_scale=3.0, lowres_cond_img=lowres,
            lowres_noise_times=lowres_times, cfg_remove_parallel_component=True,
        )[0]

    def our_step():
        plan = mine.sampling_plan(cond_scale=3.0)[1]
        cond = mine._stage_cond(1, BATCH, embeds, masks)
        lowres_log_snr = get_noise_schedule("linear").log_snr(lowres_times)  # the lowres schedule's
        cond.update(lowres_cond_img=lowres, lowres_noise_times=lowres_log_snr)
        x0_model = mine._x0_model(plan, cond, dict(remove_parallel_component=True, keep_parallel_frac=0.0))
        return sample_vp_ddpm(x0_model, z, torch.tensor([0.6, 0.4]), schedule=mine.stages[1].schedule, cond=cond)

    got, expected = run_both(0, monkeypatch, reference_step, our_step)
    assert_close(got, expected)


# ---------------------------------------------------------------------------------------- (c)


@pytest.mark.parametrize("cond_scale", [1.0, (3.0, 2.0)])
def test_full_imagen_sample_equals_the_reference(cond_scale, monkeypatch):
    mine, reference = cascades("Imagen", timesteps=(4, 3))
    embeds, masks = text_condition()
    kwargs = dict(text_embeds=embeds, text_masks=masks, cond_scale=cond_scale, use_tqdm=False,
                  return_all_unet_outputs=True)
    got, expected = run_both(7, monkeypatch, lambda: reference.sample(**kwargs), lambda: mine.sample(**kwargs))
    for stage_got, stage_expected in zip(got, expected, strict=True):
        assert_close(stage_got, stage_expected)


@pytest.mark.parametrize(("kind", "steps"), [("Imagen", dict(timesteps=(3, 2))),
                                             ("ElucidatedImagen", dict(num_sample_steps=(3, 2)))])
def test_inpainting_equals_the_reference(kind, steps, monkeypatch):
    mine, reference = cascades(kind, **steps)
    embeds, masks = text_condition()
    known = _rand(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    keep = torch.zeros(BATCH, 16, 16, dtype=torch.bool)
    keep[:, :, :8] = True
    kwargs = dict(text_embeds=embeds, text_masks=masks, cond_scale=2.0, inpaint_images=known, inpaint_masks=keep,
                  inpaint_resample_times=2, use_tqdm=False)
    got, expected = run_both(9, monkeypatch, lambda: reference.sample(**kwargs), lambda: mine.sample(**kwargs))
    assert_close(got, expected)


@pytest.mark.parametrize("cond_scale", [1.0, (3.0, 2.0)])
def test_full_elucidated_sample_equals_the_reference(cond_scale, monkeypatch):
    mine, reference = cascades("ElucidatedImagen", num_sample_steps=(3, 2))
    embeds, masks = text_condition()
    kwargs = dict(text_embeds=embeds, text_masks=masks, cond_scale=cond_scale, use_tqdm=False,
                  return_all_unet_outputs=True)
    got, expected = run_both(11, monkeypatch, lambda: reference.sample(**kwargs), lambda: mine.sample(**kwargs))
    for stage_got, stage_expected in zip(got, expected, strict=True):
        assert_close(stage_got, stage_expected)


def test_elucidated_sigma_overrides_and_skip_steps_equal_the_reference(monkeypatch):
    mine, reference = cascades("ElucidatedImagen", num_sample_steps=4)
    embeds, masks = text_condition()
    init = _rand(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(12))
    kwargs = dict(text_embeds=embeds, text_masks=masks, cond_scale=2.0, sigma_min=0.01, sigma_max=(40.0, 20.0),
                  init_images=(None, init), skip_steps=(0, 1), use_tqdm=False)
    got, expected = run_both(13, monkeypatch, lambda: reference.sample(**kwargs), lambda: mine.sample(**kwargs))
    assert_close(got, expected)


# ------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("kind", ["Imagen", "ElucidatedImagen"])
def test_config_classes_build_what_the_reference_config_classes_build(kind):
    """Dict U-Nets get the reference's UnetConfig defaults (same parameter counts and state-dict keys),
    dict(is_null=True) is a NullUnet, cond_drop_prob defaults to 0.5, the schedules are padded alike."""
    from imagen_pytorch import configs as ref_configs

    unets = [dict(is_null=True), dict(dim=8, dim_mults=(1, 2)), dict(dim=8, dim_mults=(1, 2), cond_dim=16)]
    settings = dict(unets=unets, image_sizes=(8, 16, 32))
    ref_class = ref_configs.ImagenConfig if kind == "Imagen" else ref_configs.ElucidatedImagenConfig
    our_class = ours.ImagenConfig if kind == "Imagen" else ours.ElucidatedImagenConfig
    ref_config, our_config = ref_class(**settings), our_class(**settings)
    assert our_config.cond_drop_prob == ref_config.cond_drop_prob == 0.5
    reference, mine = ref_config.create(), our_config.create()
    assert [type(u).__name__ for u in mine.unets] == [type(u).__name__ for u in reference.unets]
    assert [sum(p.numel() for p in u.parameters()) for u in mine.unets] == \
        [sum(p.numel() for p in u.parameters()) for u in reference.unets]
    load_same_weights(mine, reference)
    if kind == "Imagen":
        by_function = {ref_module.alpha_cosine_log_snr: "cosine", ref_module.beta_linear_log_snr: "linear"}
        assert [by_function[s.log_snr] for s in reference.noise_schedulers] == list(mine.config.noise_schedules)
