"""A checkpoint written by imagen-pytorch 2.1.0's own ImagenTrainer, read by ours.

The reference trainer trains a tiny two-stage Imagen (built from its ``ImagenConfig``, so the file
holds ``imagen_params``) for a few steps on CPU and saves. Then:

(a) ``imagen convert`` / ``read_reference_checkpoint`` rebuild our cascade from ``imagen_params``
    and its state dict loads with zero missing or unexpected keys, every tensor equal;
(b) ``ImagenTrainer.load`` restores the online weights, each unet's EMA (ema-pytorch wrappers in a
    ModuleList on the reference side), the step counts, the Adam state (matched by parameter name)
    and the learning rate; one more update with the same gradients on both sides gives the same
    weights, EMA and learning rate (the schedule goes on identically);
(c) the converted checkpoint samples the same image as the reference's ``load_imagen_from_checkpoint``
    of the original file, with every random draw fed identically to both (the tape of
    ``test_cascade.py``), to 1e-5 in float32.
"""

from __future__ import annotations

import pytest
import torch
from imagen_pytorch import ImagenConfig as RefImagenConfig
from imagen_pytorch import ImagenTrainer as RefImagenTrainer
from imagen_pytorch import load_imagen_from_checkpoint as ref_load_imagen_from_checkpoint
from ref_testing import assert_close, randomize_
from test_cascade import BATCH, OUTPUT_SCALE, SECOND, TEXT_DIM, TEXT_LEN, UNET, run_both, text_condition

from imagen.cascade import load_imagen_from_checkpoint, read_reference_checkpoint
from imagen.cli import main as cli_main
from imagen.trainer import ImagenTrainer, load_checkpoint

STEPS = 3
TRAINER = dict(lr=1e-3, warmup_steps=2, cosine_decay_max_steps=20, ema_beta=0.9, ema_update_after_step=0,
               ema_update_every=1)


def _listed(settings: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    embeds, masks = text_condition(seed)
    return torch.rand(BATCH, 3, 8, 8, generator=g), embeds, masks


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """(path of the reference trainer's checkpoint, the reference trainer after saving)."""
    torch.manual_seed(0)  # the reference trainer's own draws (training noise) come from the global RNG
    imagen = RefImagenConfig(
        unets=[_listed(UNET), _listed(SECOND)], image_sizes=[8, 16], timesteps=[4, 3], cond_drop_prob=0.5,
        text_embed_dim=TEXT_DIM,
    ).create()
    randomize_(imagen, seed=3)
    with torch.no_grad():
        for unet in imagen.unets:
            unet.final_conv.weight.mul_(OUTPUT_SCALE / 0.2)
    trainer = RefImagenTrainer(imagen, verbose=False, **TRAINER)
    for step in range(STEPS):
        images, embeds, masks = _batch(step)
        trainer(images, text_embeds=embeds, text_masks=masks, unet_number=1)
        trainer.update(unet_number=1)
    path = tmp_path_factory.mktemp("reference") / "checkpoint.pt"
    trainer.save(str(path))
    return path, trainer


def _ours_loaded(path) -> ImagenTrainer:
    config = read_reference_checkpoint(path).config()
    trainer = ImagenTrainer(config.create(), verbose=False, **TRAINER)
    trainer.load(path)
    return trainer


def test_converted_state_dict_has_no_missing_or_unexpected_keys(reference_run, tmp_path, capsys):
    path, reference = reference_run
    ref = read_reference_checkpoint(path)
    assert ref.version == "2.1.0" and ref.steps == [STEPS, 0] and ref.imagen_type == "original"
    cascade = ref.config().create()
    result = cascade.load_state_dict(ref.model, strict=False)
    assert not result.missing_keys and not result.unexpected_keys, result
    out = tmp_path / "converted.safetensors"
    assert cli_main(["--quiet", "convert", str(path), str(out)]) == 0, capsys.readouterr().err
    converted = load_checkpoint(out)
    expected = reference.imagen.state_dict()
    weights = converted.with_prefix("imagen.")
    assert set(weights) == set(expected)
    for key, value in expected.items():
        assert torch.equal(weights[key], value.cpu()), key
    ema = converted.with_prefix("ema_imagen.unets.0.")
    for key, value in reference.ema_unets[0].ema_model.state_dict().items():
        assert torch.equal(ema[key], value.cpu()), key
    assert converted.trainer_state["steps"] == [STEPS, 0]


def test_trainer_load_restores_weights_ema_steps_and_optimizer(reference_run):
    path, reference = reference_run
    ours = _ours_loaded(path)
    assert ours.steps.tolist() == [STEPS, 0]
    for key, value in reference.imagen.state_dict().items():
        assert torch.equal(ours.imagen.state_dict()[key], value), key
    ref_ema, our_ema = reference.ema_unets[0], ours.emas["0"]
    for key, value in ref_ema.ema_model.state_dict().items():
        assert torch.equal(our_ema.ema_model.state_dict()[key], value), key
    assert int(our_ema.step) == int(ref_ema.step) == STEPS
    ref_optimizer = reference.optim0.optimizer  # accelerate's wrapper around torch's Adam
    our_optimizer = ours.optimizers[0]
    our_params = dict(ours.imagen.unets[0].named_parameters())
    checked = 0
    for name, parameter in reference.imagen.unets[0].named_parameters():
        if parameter not in ref_optimizer.state:
            continue
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(our_optimizer.state[our_params[name]][key], ref_optimizer.state[parameter][key]), name
        checked += 1
    assert checked == len(our_params)
    assert our_optimizer.param_groups[0]["lr"] == pytest.approx(ref_optimizer.param_groups[0]["lr"], rel=1e-12)


def test_one_more_update_continues_identically(reference_run, tmp_path):
    path, _ = reference_run
    reference = RefImagenTrainer(imagen_checkpoint_path=None, imagen=_reference_cascade_from(path), verbose=False,
                                 **TRAINER)
    reference.load(str(path))
    ours = _ours_loaded(path)
    images, embeds, masks = _batch(99)
    reference(images, text_embeds=embeds, text_masks=masks, unet_number=1)  # prepares the reference's unet
    ours(images, text_embeds=embeds, text_masks=masks, unet_number=1)
    g = torch.Generator().manual_seed(5)
    our_params = dict(ours.imagen.unets[0].named_parameters())
    for name, parameter in reference.imagen.unets[0].named_parameters():
        grad = torch.randn(parameter.shape, generator=g) * 0.01
        parameter.grad, our_params[name].grad = grad.clone(), grad.clone()
    reference.update(unet_number=1)
    assert ours.update(unet_number=1)
    for key, value in reference.imagen.unets[0].state_dict().items():
        assert_close(ours.imagen.unets[0].state_dict()[key], value)
    for key, value in reference.ema_unets[0].ema_model.state_dict().items():
        assert_close(ours.emas["0"].ema_model.state_dict()[key], value)
    assert ours.optimizers[0].param_groups[0]["lr"] == pytest.approx(
        reference.optim0.optimizer.param_groups[0]["lr"], rel=1e-9)


def _reference_cascade_from(path):
    return RefImagenConfig(**torch.load(str(path), weights_only=True)["imagen_params"]).create()


@pytest.mark.parametrize("ema", [False, True])
def test_converted_checkpoint_samples_the_reference_image(ema, reference_run, tmp_path, monkeypatch):
    path, _ = reference_run
    out = tmp_path / "converted.safetensors"
    assert cli_main(["--quiet", "convert", str(path), str(out)]) == 0
    mine = load_imagen_from_checkpoint(out, load_ema_if_available=ema).eval()
    reference = ref_load_imagen_from_checkpoint(str(path), load_ema_if_available=ema).eval()
    embeds, masks = text_condition(4)
    kwargs = dict(text_embeds=embeds, text_masks=masks, cond_scale=(3.0, 2.0), use_tqdm=False,
                  return_all_unet_outputs=True)
    got, expected = run_both(21, monkeypatch, lambda: reference.sample(**kwargs), lambda: mine.sample(**kwargs))
    for stage_got, stage_expected in zip(got, expected, strict=True):
        assert_close(stage_got, stage_expected)
    assert embeds.shape == (BATCH, TEXT_LEN, TEXT_DIM)


def test_every_reference_trainer_keyword_is_accepted_with_its_default():
    import inspect

    from imagen_pytorch.data import Dataset as RefDataset

    from imagen.trainer import Dataset

    ours = inspect.signature(ImagenTrainer.__init__).parameters
    for name, parameter in inspect.signature(RefImagenTrainer.__init__).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        assert name in ours, name
        assert ours[name].default == parameter.default, (name, ours[name].default, parameter.default)
    dataset = inspect.signature(Dataset.__init__).parameters
    for name in inspect.signature(RefDataset.__init__).parameters:
        assert name in dataset, name
    assert dataset["augment_horizontal_flip"].default is True  # the reference always flips


def test_an_elucidated_reference_checkpoint_converts_and_samples_the_same(tmp_path, monkeypatch):
    from imagen_pytorch import ElucidatedImagenConfig as RefElucidatedImagenConfig

    torch.manual_seed(0)  # the reference trainer's own draws (training noise) come from the global RNG
    imagen = RefElucidatedImagenConfig(
        unets=[_listed(UNET), _listed(SECOND)], image_sizes=[8, 16], num_sample_steps=[3, 2], cond_drop_prob=0.5,
        text_embed_dim=TEXT_DIM,
    ).create()
    randomize_(imagen, seed=4)
    with torch.no_grad():
        for unet in imagen.unets:
            unet.final_conv.weight.mul_(OUTPUT_SCALE / 0.2)
    trainer = RefImagenTrainer(imagen, verbose=False, **TRAINER)
    images, embeds, masks = _batch(0)
    trainer(images, text_embeds=embeds, text_masks=masks, unet_number=1)
    trainer.update(unet_number=1)
    path, out = tmp_path / "elucidated.pt", tmp_path / "converted.safetensors"
    trainer.save(str(path))
    assert cli_main(["--quiet", "convert", str(path), str(out)]) == 0
    mine = load_imagen_from_checkpoint(out, load_ema_if_available=True).eval()
    assert type(mine).__name__ == "ElucidatedImagen"
    reference = ref_load_imagen_from_checkpoint(str(path), load_ema_if_available=True).eval()
    kwargs = dict(text_embeds=embeds, text_masks=masks, cond_scale=(3.0, 2.0), use_tqdm=False,
                  return_all_unet_outputs=True)
    got, expected = run_both(23, monkeypatch, lambda: reference.sample(**kwargs), lambda: mine.sample(**kwargs))
    for stage_got, stage_expected in zip(got, expected, strict=True):
        assert_close(stage_got, stage_expected)
