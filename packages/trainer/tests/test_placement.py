"""ImagenTrainer(compile=, use_one_unet_in_gpu=, ema_device=): the compiled training path equals the
eager one; idle stages, their Adam state and the EMA copies leave the accelerator, with the results
of the default placement."""

from types import SimpleNamespace

import pytest
import torch
from ema_pytorch import EMA

from imagen.cascade import Imagen
from imagen.trainer import ImagenTrainer, load_checkpoint
from imagen.trainer.placement import StagePlacement


def _randomize_output(imagen):
    """A fresh U-Net outputs exactly zero: seeded noise in every all-zero parameter."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in imagen.parameters():
            if parameter.is_floating_point() and not parameter.any():
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return imagen


def _cascade(unet_factory, stages=2):
    torch.manual_seed(0)
    unets = [unet_factory() for _ in range(stages)]
    return _randomize_output(Imagen(unets=unets, image_sizes=(8, 16)[:stages] if stages > 1 else 16,
                                    text_embed_dim=16, timesteps=3))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 16, 16, generator=g), torch.randn(4, 5, 16, generator=g)


def _trained_state(trainer) -> dict:
    """The cascade's weights and every EMA copy, on the CPU."""
    state = {f"imagen.{k}": v for k, v in trainer.imagen.state_dict().items()}
    for index, stage in trainer.stages.items():
        state.update({f"ema.{index}.{k}": v for k, v in stage.ema.ema_model.state_dict().items()})
    return {k: v.detach().cpu() for k, v in state.items()}


def _devices(module) -> set[str]:
    return {p.device.type for p in module.parameters()}


EMA_EVERY_STEP = dict(ema_update_after_step=0, ema_update_every=1)


@pytest.mark.slow
def test_compiled_training_equals_eager_and_compiles_once(unet_factory, tmp_path):
    images, embeds = _batch()
    states, compiled = [], None
    for options in ({}, {"compile": {"backend": "aot_eager"}}):
        trainer = ImagenTrainer(_cascade(unet_factory, stages=1), verbose=False, lr=1e-3, **EMA_EVERY_STEP, **options)
        for _ in range(2):
            trainer(images, text_embeds=embeds, unet_number=1)
            trainer.update(unet_number=1)
            if options:
                compiled = trainer._compiled_unets[0] if compiled is None else compiled
                assert trainer._compiled_unets == {0: compiled}  # made at the first step, kept
        states.append(_trained_state(trainer))
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    for key, eager in states[0].items():
        torch.testing.assert_close(states[1][key], eager, rtol=1e-5, atol=1e-6, msg=key)
    trainer.save(tmp_path / "compiled.safetensors")
    tensors = load_checkpoint(tmp_path / "compiled.safetensors").tensors
    assert not any("_orig_mod" in key for key in [*tensors, *trainer.state_dict()])


def test_compile_option_is_checked(unet_factory):
    with pytest.raises(TypeError, match="compile must be a bool or a dict"):
        ImagenTrainer(_cascade(unet_factory, stages=1), verbose=False, compile="yes")
    with pytest.raises(TypeError, match="use_one_unet_in_gpu must be a bool"):
        ImagenTrainer(_cascade(unet_factory, stages=1), verbose=False, use_one_unet_in_gpu="yes")
    with pytest.raises(ValueError, match="ema_device must be None or a device"):
        ImagenTrainer(_cascade(unet_factory, stages=1), verbose=False, ema_device="nowhere")


def test_one_unet_on_the_device_trains_and_samples_as_the_default_placement(unet_factory, device):
    """On CUDA: after a step of unet 2 only it is on the GPU (unet 1, every EMA copy on the CPU); on
    the CPU both placements are the same one. Either way the weights, EMA and samples equal the default's."""
    images, embeds = _batch()
    results = []
    for options in ({}, {"use_one_unet_in_gpu": True, "ema_device": "cpu"}):
        trainer = ImagenTrainer(_cascade(unet_factory), verbose=False, lr=1e-3, accelerate_cpu=device.type == "cpu",
                                **EMA_EVERY_STEP, **options)
        for unet_number in (1, 2):
            trainer(images, text_embeds=embeds, unet_number=unet_number)
            trainer.update(unet_number=unet_number)
        if options:
            first, second = trainer.imagen.unets
            assert _devices(first) == {"cpu"} and _devices(second) == {device.type}
            assert all(_devices(stage.ema.ema_model) == {"cpu"} for stage in trainer.stages.values())
            moments = [s["exp_avg"] for s in trainer.stages[0].optimizer.state.values()]
            assert moments and {m.device.type for m in moments} == {"cpu"}
        samples = trainer.sample(text_embeds=embeds[:2], cond_scale=2.0, generator=3, use_tqdm=False).cpu()
        every = trainer.sample(text_embeds=embeds[:2], generator=3, use_tqdm=False, use_one_unet_in_gpu=False).cpu()
        if options:
            assert _devices(trainer.imagen.unets[0]) == {"cpu"}  # back where it waits after sampling
        results.append((_trained_state(trainer), samples, every))
    for key, value in results[0][0].items():
        torch.testing.assert_close(results[1][0][key], value, msg=key)
    torch.testing.assert_close(results[1][1], results[0][1])
    torch.testing.assert_close(results[1][2], results[0][2])


def _toy_stage(unet):
    """A trained-once stage: Adam moments exist, an EMA copy follows it."""
    optimizer = torch.optim.Adam(unet.parameters())
    unet(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return SimpleNamespace(optimizer=optimizer, ema=EMA(unet, include_online_model=False), prepared_unet=None)


@pytest.mark.parametrize("ema_device", [None, "cpu"])
def test_activation_moves_one_stage_with_its_adam_state_and_ema(ema_device):
    """The moves themselves, with ``meta`` standing in for an accelerator on a CPU-only machine."""
    unets = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
    stages = {i: _toy_stage(unet) for i, unet in enumerate(unets)}
    placement = StagePlacement(torch.device("meta"), one_unet_on_device=True, ema_device=ema_device)
    placement.activate(unets, stages, 1)
    assert [_devices(unet) for unet in unets] == [{"cpu"}, {"meta"}, {"cpu"}]
    for i, stage in stages.items():
        state = list(stage.optimizer.state.values())
        assert {s["exp_avg"].device.type for s in state} == {"meta" if i == 1 else "cpu"}
        assert {s["step"].device.type for s in state} == {"cpu"}  # non-capturable Adam keeps step on the CPU
        ema_home = "meta" if i == 1 and ema_device is None else "cpu"
        assert _devices(stage.ema.ema_model) == {ema_home}
        assert {stage.ema.step.device.type, stage.ema.initted.device.type} == {"cpu"}  # read with .item()
    if ema_device is None:  # an update of the copy on the device reads its counters without a sync
        stages[1].ema.update()  # (a meta tensor's .item() would raise)
        assert stages[1].ema.step.item() == 1
    assert placement.active == 1
    placement.activate(unets, stages, 1)  # the same stage again: nothing moves
    assert [_devices(unet) for unet in unets] == [{"cpu"}, {"meta"}, {"cpu"}]


def test_a_new_ema_copy_goes_to_the_device_without_its_counters():
    unet = torch.nn.Linear(4, 4)
    ema = EMA(unet, include_online_model=False)
    StagePlacement(torch.device("meta")).place_ema(ema, 0)
    assert _devices(ema.ema_model) == {"meta"}
    assert {ema.step.device.type, ema.initted.device.type} == {"cpu"}


def test_the_cascade_goes_to_the_device_without_its_unets(unet_factory):
    imagen = _cascade(unet_factory)
    StagePlacement(torch.device("meta"), one_unet_on_device=True).place_cascade(imagen)
    assert imagen.device.type == "meta"
    assert all(_devices(unet) == {"cpu"} for unet in imagen.unets)
