"""ImagenTrainer.load of an imagen-pytorch checkpoint: online weights, EMA, steps, optimizer state.

The file is laid out as the reference's ``ImagenTrainer.save`` writes it (``model``, ``ema`` as an
``nn.ModuleList`` of ema-pytorch ``EMA`` wrappers with their online copies, ``steps``, ``optim0``,
``scheduler0``, ``warmup0``, ``scaler0``, ``imagen_params``); ``reference/test_checkpoints.py``
checks the same against a checkpoint written by the reference package itself.
"""

import pytest
import torch
from ema_pytorch import EMA
from torch import nn

from imagen.cascade import ImagenConfig
from imagen.trainer import CheckpointError, ImagenTrainer, load_checkpoint

UNET = dict(dim=8, dim_mults=[1, 2], num_resnet_blocks=1, layer_attns=False, layer_cross_attns=False,
            text_embed_dim=16, attn_heads=2, attn_dim_head=8)
PARAMS = {"unets": [UNET], "image_sizes": [8], "timesteps": 7, "text_embed_dim": 16, "cond_drop_prob": 0.5}


def _reference_trainer_file(path, steps=3):
    """Trains a copy of the cascade a few Adam steps as the reference's trainer does (parameters in
    state-dict order: here the REVERSE of ours, so a positional mapping would be caught) and saves
    it in the reference's layout."""
    cascade = ImagenConfig(**PARAMS).create()
    unet = cascade.unets[0]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in cascade.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    names = [n for n, _ in unet.named_parameters()][::-1]
    params = dict(unet.named_parameters())
    optimizer = torch.optim.Adam([params[n] for n in names], lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    lr_lambda = lambda s: min(1.0, (s + 1) / 10)  # noqa: E731 - the reference's warm-up dampening
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    ema = nn.ModuleList([EMA(unet, beta=0.9, update_after_step=0, update_every=1)])
    for _ in range(steps):
        for p in unet.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
        scheduler.step()
        ema[0].update()
    buffers = dict(unet.named_buffers())
    sd = unet.state_dict()
    model = {f"unets.0.{n}": sd[n] for n in names}  # the state dict in the reference's order
    model.update({f"unets.0.{n}": sd[n] for n in sd if n not in params})
    assert set(model) == set(cascade.state_dict()) and buffers is not None
    contents = dict(
        model=model, ema=ema.state_dict(), steps=torch.tensor([steps]), version="2.1.0", optim0=optimizer.state_dict(),
        scaler0={}, scheduler0={"T_max": 100}, warmup0={"warmup_params": [{"warmup_period": 10}], "last_step": steps},
        imagen_type="original", imagen_params=PARAMS,
    )
    torch.save(contents, path)
    return cascade, ema[0], optimizer, names


def _trainer(**kwargs):
    return ImagenTrainer(ImagenConfig(**PARAMS).create(), lr=1e-3, warmup_steps=10, verbose=False, **kwargs)


def test_load_reads_weights_ema_steps_and_optimizer(tmp_path):
    cascade, ema, optimizer, names = _reference_trainer_file(tmp_path / "ref.pt")
    trainer = _trainer(ema_beta=0.9, ema_update_after_step=0, ema_update_every=1)
    trainer.load(tmp_path / "ref.pt")
    for key, value in cascade.state_dict().items():
        assert torch.equal(trainer.imagen.state_dict()[key], value), key
    ours_ema = trainer.emas["0"]
    for key, value in ema.ema_model.state_dict().items():
        assert torch.equal(ours_ema.ema_model.state_dict()[key], value), key
    assert int(ours_ema.step) == int(ema.step) == 3 and bool(ours_ema.initted)
    assert trainer.steps.tolist() == [3]
    # the optimizer state moved by parameter name, and the schedule resumes at the saved rate
    ours = trainer.optimizers[0]
    by_name = dict(zip(names, range(len(names))))
    our_names = [n for n, _ in trainer.imagen.unets[0].named_parameters()]
    saved = optimizer.state_dict()["state"]
    for position, name in enumerate(our_names):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(ours.state_dict()["state"][position][key], saved[by_name[name]][key]), (name, key)
    assert ours.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"]) == pytest.approx(4e-4)
    # and training continues: one more step equals the reference optimizer's next step
    images = torch.rand(2, 3, 8, 8)
    trainer(images, text_embeds=torch.randn(2, 3, 16), unet_number=1)
    assert trainer.update(1)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(5e-4)
    # what the trainer saves again is our safetensors layout
    trainer.save(tmp_path / "ours.safetensors")
    assert load_checkpoint(tmp_path / "ours.safetensors").trainer_state["steps"] == [4]


def test_a_reference_checkpoint_resumes_from_a_checkpoint_folder(tmp_path):
    cascade, *_ = _reference_trainer_file(tmp_path / "checkpoint.3.pt")
    trainer = _trainer(checkpoint_path=tmp_path)
    assert trainer.steps.tolist() == [3]
    assert torch.equal(next(iter(trainer.imagen.parameters())), next(iter(cascade.parameters())))


def test_a_reference_checkpoint_of_another_cascade_is_refused(tmp_path):
    _reference_trainer_file(tmp_path / "ref.pt")
    other = ImagenTrainer(ImagenConfig(**{**PARAMS, "unets": [{**UNET, "dim": 16}]}).create(), verbose=False)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        other.load(tmp_path / "ref.pt")


def test_a_reference_checkpoint_with_other_sampling_steps_loads_with_a_warning(tmp_path):
    _reference_trainer_file(tmp_path / "ref.pt")
    trainer = ImagenTrainer(ImagenConfig(**{**PARAMS, "timesteps": 50}).create(), verbose=False)
    with pytest.warns(UserWarning, match="timesteps"):
        trainer.load(tmp_path / "ref.pt")
    assert trainer.steps.tolist() == [3]
    retrained = ImagenTrainer(ImagenConfig(**{**PARAMS, "cond_drop_prob": 0.25}).create(), verbose=False)
    with pytest.raises(ValueError, match="cond_drop_prob"):
        retrained.load(tmp_path / "ref.pt")


def test_a_reference_checkpoint_through_fsspec(tmp_path):
    import uuid

    import fsspec

    cascade, *_ = _reference_trainer_file(tmp_path / "ref.pt")
    url = f"memory://imagen-{uuid.uuid4().hex}/checkpoint.3.pt"
    with fsspec.open(url, "wb") as handle:
        handle.write((tmp_path / "ref.pt").read_bytes())
    trainer = _trainer()
    trainer.load(url)
    assert trainer.steps.tolist() == [3]
    resumed = _trainer(checkpoint_path=url.rsplit("/", 1)[0])  # auto-resume finds checkpoint.3.pt there
    assert resumed.steps.tolist() == [3]
    assert torch.equal(next(iter(resumed.imagen.parameters())), next(iter(cascade.parameters())))


def test_imagen_checkpoint_path_builds_the_cascade_of_a_reference_file(tmp_path):
    cascade, *_ = _reference_trainer_file(tmp_path / "ref.pt")
    trainer = ImagenTrainer(imagen_checkpoint_path=tmp_path / "ref.pt", verbose=False)
    for key, value in cascade.state_dict().items():
        assert torch.equal(trainer.imagen.state_dict()[key], value), key
    assert trainer.steps.tolist() == [0]  # the cascade only, as the reference's keyword
