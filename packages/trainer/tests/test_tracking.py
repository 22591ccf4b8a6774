"""Trackers through accelerate: TensorBoard for real (event files read back with tensorboard's own
reader), hyper-parameters, validation and sample grids from ``fit``, refusals before training."""

import math

import numpy as np
import pytest
import torch
import yaml
from accelerate.tracking import GeneralTracker
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imagen.cascade import Imagen
from imagen.trainer import Dataset, ImagenTrainer, WarmupCosine
from imagen.trainer.tracking import Progress, flat_hyperparameters

CAPTIONS = ["a puppy on the table", "a giant donut", "milky way galaxy", "a puppy looking at a donut",
            "the style of monet", "a donut on the table"]


def captioned_folder(path, image_folder):
    folder = image_folder(path, len(CAPTIONS), size=16)
    for i, caption in enumerate(CAPTIONS):
        (folder / f"img{i:03d}.txt").write_text(caption)
    return folder


def events(folder):
    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def randomize_output(imagen):
    """A fresh U-Net outputs exactly zero (zero-initialised output layer): seeded noise in every
    all-zero parameter, so the samples depend on the prompts."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in imagen.parameters():
            if parameter.is_floating_point() and not parameter.any():
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))


def test_fit_logs_scalars_validation_and_captioned_grids_to_tensorboard(tmp_path, tiny_t5, unet_factory, image_folder):
    folder = captioned_folder(tmp_path / "images", image_folder)
    imagen = Imagen(unets=[unet_factory()], image_sizes=16, text_encoder_name=tiny_t5, timesteps=2)
    randomize_output(imagen)
    runs = tmp_path / "runs"
    trainer = ImagenTrainer(imagen, lr=1e-3, warmup_steps=3, cosine_decay_max_steps=10, verbose=False,
                            split_valid_from_train=True, split_valid_fraction=0.2, log_with="tensorboard",
                            project_dir=runs, log_every=2, run_config={"dataset": {"folder": str(folder)}})
    trainer.add_train_dataset(Dataset(folder, 16), batch_size=2)
    prompts = ["a puppy", "a giant donut"]
    losses = trainer.fit(4, validate_every=2, sample_every=4, sample_prompts=prompts, sample_folder=tmp_path / "s")
    assert not trainer.tracking.open  # fit ended the trackers (end_training)
    more = trainer.fit(2, sample_every=None)  # opens them again
    log = events(runs / "imagen")
    tags = set(log.Tags()["scalars"])
    expected = {f"train/{name}/unet1" for name in ("loss", "lr", "grad_norm", "images_per_second", "nonfinite_steps")}
    assert expected | {"valid/loss/unet1"} <= tags
    loss = log.Scalars("train/loss/unet1")
    assert [e.step for e in loss] == [2, 4, 6]
    window_means = [np.mean(w) for w in (losses[:2], losses[2:], more)]  # one process: the window's mean
    assert [e.value for e in loss] == pytest.approx(window_means, rel=1e-6)
    schedule = WarmupCosine(3, 10)
    assert [e.value for e in log.Scalars("train/lr/unet1")] == pytest.approx([1e-3 * schedule(s) for s in (2, 4, 6)])
    assert [e.value for e in log.Scalars("train/nonfinite_steps/unet1")] == [0, 0, 0]
    assert all(e.value > 0 for e in log.Scalars("train/grad_norm/unet1") + log.Scalars("train/images_per_second/unet1"))
    assert [e.step for e in log.Scalars("valid/loss/unet1")] == [2, 4]
    # the sample grid: an image tag at step 4, the same picture as the PNG written beside it
    assert log.Tags()["images"] == ["samples/unet1"]
    (image,) = log.Images("samples/unet1")
    from io import BytesIO

    from PIL import Image

    png = np.asarray(Image.open(tmp_path / "s" / "sample-unet1-4.png").convert("RGB"))
    assert image.step == 4 and np.array_equal(np.asarray(Image.open(BytesIO(image.encoded_image_string))), png)
    assert png.shape[0] > png.shape[1] // 2  # two cells side by side, a caption strip under them
    # the run config as hyper-parameters, flattened to scalars
    (hparams,) = list(runs.glob("imagen/*/hparams.yml"))[:1]
    stored = yaml.safe_load(hparams.read_text())
    assert stored["trainer.lr"] == 1e-3 and stored["imagen.timesteps"] == 2
    assert stored["dataset.folder"] == str(folder)


def test_flat_hyperparameters():
    config = {"a": {"b": 1, "c": [1, 2.5], "d": None}, "e": [{"f": "x"}, {"f": True}], "g": (3,), "h": object}
    assert flat_hyperparameters(config) == {
        "a.b": 1, "a.c": "[1, 2.5]", "a.d": "None", "e.0.f": "x", "e.1.f": True, "g": "[3]", "h": str(object),
    }


@pytest.mark.parametrize(
    ("log_with", "match"),
    [("wandb", "tracker 'wandb' is not installed"), (["tensorboard", "nope"], "unknown tracker 'nope'")],
)
def test_a_tracker_that_is_not_installed_is_refused_before_training(tmp_path, toy_cascade, log_with, match):
    with pytest.raises(ValueError, match=match):
        ImagenTrainer(toy_cascade(), log_with=log_with, project_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_tensorboard_needs_a_project_dir(toy_cascade):
    with pytest.raises(ValueError, match="project_dir"):
        ImagenTrainer(toy_cascade(), log_with="tensorboard")


def test_fit_refuses_validation_without_data_and_samples_with_nowhere_to_go(toy_cascade):
    trainer = ImagenTrainer(toy_cascade(num_unets=1), verbose=False)
    trainer.add_train_dataloader(torch.utils.data.DataLoader(torch.rand(4, 3, 4, 4), batch_size=2))
    with pytest.raises(ValueError, match="validate_every needs validation data"):
        trainer.fit(2, validate_every=1)
    with pytest.raises(ValueError, match="sample_every needs sample_folder or a tracker"):
        trainer.fit(2, sample_every=1)
    with pytest.raises(ValueError, match="validate_every"):
        trainer.fit(2, validate_every=0)
    with pytest.raises(ValueError, match="exactly one of num_steps and seconds"):
        trainer.fit(2, seconds=5)
    with pytest.raises(ValueError, match="exactly one of num_steps and seconds"):
        trainer.fit()


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now


def test_a_time_budget_is_the_bars_total_in_seconds(monkeypatch, toy_cascade):
    import imagen.trainer.tracking as tracking

    clock = FakeClock()
    monkeypatch.setattr(tracking.time, "monotonic", clock.monotonic)
    progress = Progress(seconds=10, desc="unet 1")
    assert progress.bar.total == 10 and progress.bar.unit == "s" and not progress.done
    clock.now = 4.0
    progress.advance(loss="0.1")
    assert progress.bar.n == pytest.approx(4.0) and not progress.done
    clock.now = 12.0
    progress.advance()
    assert progress.bar.n == pytest.approx(10.0) and progress.done  # never past the total
    progress.close()

    trainer = ImagenTrainer(toy_cascade(num_unets=1), verbose=False)
    trainer.add_train_dataloader(torch.utils.data.DataLoader(torch.rand(4, 3, 4, 4), batch_size=2))

    def step_and_tick(trainer, unet_number, **kwargs):
        clock.now += 1.0  # each step "takes" a second
        return ImagenTrainer.train_step(trainer, unet_number, **kwargs)

    clock.now = 0.0
    losses = trainer.fit(seconds=3.5, step_fn=step_and_tick)
    assert len(losses) == math.ceil(3.5) and trainer.steps.tolist() == [4]


def test_a_video_sample_grid_shows_each_videos_frames_side_by_side(toy_cascade, monkeypatch):
    trainer = ImagenTrainer(toy_cascade(num_unets=1), verbose=False)
    videos = torch.rand(2, 3, 4, 5, 6, generator=torch.Generator().manual_seed(0))  # (B, C, F, H, W)
    monkeypatch.setattr(trainer, "sample", lambda **kwargs: videos)
    picture = np.asarray(trainer.sample_grid(columns=2))
    assert picture.shape == (5, 2 * 4 * 6, 3)
    for b in range(2):
        for f in range(4):
            frame = picture[:, (b * 4 + f) * 6 : (b * 4 + f + 1) * 6]
            assert np.array_equal(frame, videos[b, :, f].mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())


class RecordingTracker(GeneralTracker):
    """A minimal accelerate tracker (any GeneralTracker but TensorBoard, e.g. W&B's, takes images as
    a list per tag)."""

    name = "recording"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self):
        super().__init__(_blank=True)
        self.config, self.scalars, self.images, self.finished = None, [], [], 0

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kwargs):
        self.scalars.append((step, dict(values)))

    def log_images(self, values, step=None, **kwargs):
        self.images.append((step, {k: [np.asarray(v) for v in vs] for k, vs in values.items()}))

    def finish(self):
        self.finished += 1


def test_a_custom_tracker_gets_config_scalars_and_images_as_lists(toy_cascade, tmp_path):
    tracker = RecordingTracker()
    trainer = ImagenTrainer(toy_cascade(num_unets=1), verbose=False, log_with=[tracker], log_every=2, seed=5)
    trainer.add_train_dataloader(torch.utils.data.DataLoader(torch.rand(4, 3, 4, 4), batch_size=2))
    trainer.fit(4, sample_every=4, sample_kwargs={"batch_size": 2})
    assert tracker.config["trainer.seed"] == 5 and tracker.config["imagen.kind"] == "toy"
    assert [step for step, _ in tracker.scalars] == [2, 4]
    assert set(tracker.scalars[0][1]) >= {"train/loss/unet1", "train/lr/unet1", "train/grad_norm/unet1"}
    ((step, images),) = tracker.images
    assert step == 4 and list(images) == ["samples/unet1"] and images["samples/unet1"][0].shape == (4, 8, 3)
    assert tracker.finished == 1  # end_training
