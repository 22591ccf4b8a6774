"""The trainer on the real cascade: the reference README's trainer examples scaled down (only imports
and sizes change), exact resume, corrupt data, checkpoints readable by load_imagen_from_checkpoint."""

import pytest
import torch

from imagen.cascade import ElucidatedImagenConfig, Imagen, load_imagen_from_checkpoint
from imagen.text import get_encoded_dim
from imagen.trainer import Dataset, ImagenTrainer


def test_readme_train_with_text_embeds_then_sample_texts(tiny_t5, unet_factory):
    unet1 = unet_factory(cond_dim=16, layer_attns=(False, True), layer_cross_attns=(False, True))
    unet2 = unet_factory(cond_dim=16, num_resnet_blocks=(1, 2), layer_cross_attns=(False, True))
    imagen = Imagen(
        unets=(unet1, unet2), text_encoder_name=tiny_t5, image_sizes=(8, 16), timesteps=4, cond_drop_prob=0.1
    )
    trainer = ImagenTrainer(imagen, verbose=False)
    text_embeds = torch.randn(8, 6, get_encoded_dim(tiny_t5))
    images = torch.rand(8, 3, 16, 16)
    loss = trainer(images, text_embeds=text_embeds, unet_number=1, max_batch_size=4)
    trainer.update(unet_number=1)
    assert isinstance(loss, float) and loss > 0
    images = trainer.sample(
        texts=["a puppy looking anxiously at a giant donut on the table", "the milky way galaxy in the style of monet"],
        cond_scale=3.0,
    )
    assert images.shape == (2, 3, 16, 16)


def test_readme_unconditional(unet_factory):
    imagen = Imagen(condition_on_text=False, unets=(unet_factory(), unet_factory()), image_sizes=(8, 16), timesteps=3)
    trainer = ImagenTrainer(imagen, verbose=False)
    training_images = torch.rand(4, 3, 32, 32)
    loss = trainer(training_images, unet_number=1)
    trainer.update(unet_number=1)
    assert torch.isfinite(torch.tensor(loss))
    assert trainer.sample(batch_size=3).shape == (3, 3, 16, 16)


def test_readme_save_load_steps(tmp_path, unet_factory):
    imagen = Imagen(condition_on_text=False, unets=(unet_factory(), unet_factory()), image_sizes=(8, 16), timesteps=3)
    trainer = ImagenTrainer(imagen, verbose=False)
    for n in (1, 2):
        trainer(torch.rand(2, 3, 16, 16), unet_number=n)
        trainer.update(unet_number=n)
    trainer.save(tmp_path / "path/to/checkpoint.pt")
    trainer.load(tmp_path / "path/to/checkpoint.pt")
    assert trainer.steps.tolist() == [1, 1]


def test_readme_dataset_training_loop(tmp_path, unet_factory, image_folder):
    folder = image_folder(tmp_path / "images", 10, size=20)
    imagen = Imagen(condition_on_text=False, unets=unet_factory(), image_sizes=16, timesteps=3)
    trainer = ImagenTrainer(imagen=imagen, split_valid_from_train=True, verbose=False)
    dataset = Dataset(folder, image_size=16)
    trainer.add_train_dataset(dataset, batch_size=4)
    for i in range(3):
        loss = trainer.train_step(unet_number=1, max_batch_size=2)
        assert loss > 0
        if not (i % 2):
            valid_loss = trainer.valid_step(unet_number=1, max_batch_size=2)
            assert valid_loss > 0
        if not (i % 2) and trainer.is_main:
            images = trainer.sample(batch_size=1, return_pil_images=True)
            images[0].save(tmp_path / f"sample-{i // 2}.png")
    assert trainer.steps.tolist() == [3]
    assert (tmp_path / "sample-1.png").is_file()


def test_readme_config_checkpoint_is_loadable_and_finetunable(tmp_path):
    imagen = ElucidatedImagenConfig(
        unets=[
            dict(dim=8, dim_mults=(1, 2), layer_attns=False, layer_cross_attns=False),
            dict(dim=8, dim_mults=(1, 2), layer_attns=False, layer_cross_attns=False),
        ],
        image_sizes=(8, 16),
        cond_drop_prob=0.5,
        num_sample_steps=3,
        text_embed_dim=16,
    ).create()
    trainer = ImagenTrainer(imagen, verbose=False, ema_update_after_step=0, ema_update_every=1)
    for _ in range(2):
        trainer(torch.rand(2, 3, 16, 16), text_embeds=torch.randn(2, 4, 16), unet_number=1)
        trainer.update(unet_number=1)
    trainer.save(tmp_path / "checkpoint.pt")
    imagen = load_imagen_from_checkpoint(tmp_path / "checkpoint.pt", load_ema_if_available=True)
    ema_unet = trainer.emas["0"].ema_model
    for a, b in zip(imagen.unets[0].parameters(), ema_unet.parameters()):
        assert torch.equal(a, b)  # the EMA weights when asked for
    online = load_imagen_from_checkpoint(tmp_path / "checkpoint.pt")
    for a, b in zip(online.unets[0].parameters(), trainer.imagen.unets[0].parameters()):
        assert torch.equal(a, b)  # as the reference: the trained weights by default
    trainer = ImagenTrainer(imagen, verbose=False)
    trainer(torch.rand(2, 3, 16, 16), text_embeds=torch.randn(2, 4, 16), unet_number=2)
    assert trainer.update(unet_number=2)


def _unconditional(unet_factory):
    torch.manual_seed(0)
    return Imagen(condition_on_text=False, unets=(unet_factory(), unet_factory()), image_sizes=(8, 16), timesteps=5)


def _fresh_trainer(imagen, **kwargs):
    return ImagenTrainer(
        imagen, verbose=False, ema_update_after_step=1, ema_update_every=1, warmup_steps=2, seed=3, **kwargs
    )


@pytest.mark.parametrize("unet_number", [1, 2])
def test_exact_resume_matches_a_straight_run(tmp_path, unet_factory, image_folder, unet_number):
    """2N steps straight == N steps, save, load into a fresh trainer, N steps: weights, EMA, optimizer."""
    folder = image_folder(tmp_path / "images", 7, size=16)
    n = 3

    def trainer_with_data():
        trainer = _fresh_trainer(_unconditional(unet_factory))
        trainer.add_train_dataset(Dataset(folder, 16, augment_horizontal_flip=True), batch_size=3)
        return trainer

    straight = trainer_with_data()
    for _ in range(2 * n):
        straight.train_step(unet_number=unet_number, max_batch_size=2)
    first = trainer_with_data()
    for _ in range(n):
        first.train_step(unet_number=unet_number, max_batch_size=2)
    first.save(tmp_path / "checkpoint.pt")
    del first
    resumed = trainer_with_data()
    resumed.load(tmp_path / "checkpoint.pt")
    for _ in range(n):
        resumed.train_step(unet_number=unet_number, max_batch_size=2)
    assert resumed.steps.tolist() == straight.steps.tolist()
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_folder_with_a_corrupt_image_trains_on_the_rest(tmp_path, unet_factory, image_folder):
    folder = image_folder(tmp_path / "images", 4, size=16)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30)
    with pytest.warns(UserWarning, match="broken.png"):
        dataset = Dataset(folder, image_size=16)
    assert len(dataset) == 4 and len(dataset.skipped) == 1 and "broken.png" in dataset.skipped[0][0]
    imagen = Imagen(condition_on_text=False, unets=unet_factory(), image_sizes=16, timesteps=3)
    trainer = ImagenTrainer(imagen, verbose=False)
    trainer.add_train_dataset(dataset, batch_size=2)
    for _ in range(3):
        assert trainer.train_step(unet_number=1) > 0
    assert trainer.steps.tolist() == [3]


def test_fit_writes_sample_grids_and_checkpoints(tmp_path, unet_factory, image_folder):
    folder = image_folder(tmp_path / "images", 4, size=16)
    imagen = Imagen(condition_on_text=False, unets=unet_factory(), image_sizes=16, timesteps=2)
    trainer = ImagenTrainer(imagen, verbose=False, checkpoint_path=tmp_path / "ckpt", checkpoint_every=2)
    trainer.add_train_dataset(Dataset(folder, 16), batch_size=2)
    losses = trainer.fit(4, sample_every=2, sample_folder=tmp_path / "samples", sample_kwargs={"batch_size": 3})
    assert len(losses) == 4
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["sample-unet1-2.png", "sample-unet1-4.png"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "checkpoint.2.safetensors",
        "checkpoint.4.safetensors",
    ]
    again = ImagenTrainer(
        Imagen(condition_on_text=False, unets=unet_factory(), image_sizes=16, timesteps=2),
        verbose=False,
        checkpoint_path=tmp_path / "ckpt",
    )
    assert again.steps.tolist() == [4]


def test_encode_text_is_the_cascades_encoder(tiny_t5, unet_factory):
    from imagen.cascade import Imagen

    imagen = Imagen(unets=[unet_factory()], image_sizes=8, text_encoder_name=tiny_t5, timesteps=2)
    trainer = ImagenTrainer(imagen, verbose=False)
    embeds, masks = trainer.encode_text(["a puppy"], return_attn_mask=True)
    expected, expected_masks = imagen.text_encoder.encode(["a puppy"])
    assert torch.equal(embeds, expected) and torch.equal(masks, expected_masks)
    assert torch.equal(trainer.encode_text("a puppy"), expected)
