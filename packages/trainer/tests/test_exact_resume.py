"""Exact resume with layers that draw on their own: U-Net dropout follows the trainer's saved
generators, not the global RNG."""

import torch

from imagen.cascade import Imagen
from imagen.trainer import ImagenTrainer


def _trainer(tiny_unet):
    torch.manual_seed(0)
    imagen = Imagen(condition_on_text=False, unets=(tiny_unet(dropout=0.1), tiny_unet(dropout=0.1)),
                    image_sizes=(8, 16), timesteps=5)
    return ImagenTrainer(imagen, verbose=False, warmup_steps=2, seed=3, ema_update_after_step=1, ema_update_every=1)


def _steps(trainer, count, data_seed):
    g = torch.Generator().manual_seed(data_seed)
    for _ in range(count):
        trainer(torch.rand(3, 3, 16, 16, generator=g), unet_number=2, max_batch_size=2)
        trainer.update(2)


def test_dropout_resume_is_bit_exact(tmp_path, unet_factory):
    """2N steps straight == N steps, save, fresh trainer, load, N steps, with dropout 0.1 and a
    global RNG disturbed in between: equal parameters bit for bit."""
    n = 2
    straight = _trainer(unet_factory)
    _steps(straight, n, 0)
    torch.manual_seed(123)  # whatever the caller does with the global RNG must not matter
    _steps(straight, n, 1)

    first = _trainer(unet_factory)
    _steps(first, n, 0)
    first.save(tmp_path / "checkpoint.safetensors")
    del first
    resumed = _trainer(unet_factory)
    torch.rand(1000)  # the global RNG is elsewhere now
    resumed.load(tmp_path / "checkpoint.safetensors")
    _steps(resumed, n, 1)

    assert resumed.steps.tolist() == straight.steps.tolist() == [0, 2 * n]
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_dropout_draws_leave_the_global_rng_alone(unet_factory):
    """A training step neither reads nor advances the caller's global RNG."""
    trainer = _trainer(unet_factory)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    _steps(trainer, 1, 0)
    assert torch.equal(torch.rand(4), expected)
