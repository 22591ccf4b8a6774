"""The reference's ImagenTrainer keywords and their meaning: fsspec checkpoint locations, keeping
every checkpoint, chunked / online-weight sampling, uint8 images, resuming across sampling settings."""

import uuid

import fsspec
import numpy as np
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem

from imagen.trainer import ImagenTrainer, load_checkpoint


def _trainer(cascade, **kwargs):
    kwargs.setdefault("verbose", False)
    return ImagenTrainer(cascade, **kwargs)


def _run(trainer, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        trainer(torch.rand(2, 3, 4, 4, generator=g), unet_number=2)
        trainer.update(2)


def _state(trainer):
    return {k: v.clone() for k, v in trainer.imagen.state_dict().items()}


def test_max_checkpoints_keep_zero_keeps_all(tmp_path, toy_cascade):
    trainer = _trainer(toy_cascade(), checkpoint_path=tmp_path, checkpoint_every=1, max_checkpoints_keep=0)
    _run(trainer, 4)  # crashed inside update() before
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"checkpoint.{i}.safetensors" for i in (1, 2, 3, 4)]


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_checkpoint_path_through_fsspec(scheme, tmp_path, toy_cascade):
    root = f"file://{tmp_path}/ckpts" if scheme == "file" else f"memory://imagen-{uuid.uuid4().hex}/ckpts"
    trainer = _trainer(toy_cascade(), checkpoint_path=root, checkpoint_every=2, max_checkpoints_keep=2)
    _run(trainer, 6)
    fs, folder = fsspec.core.url_to_fs(root)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))
    assert names == ["checkpoint.4.safetensors", "checkpoint.6.safetensors"]  # rotated, no temporary left
    if scheme == "file":
        assert load_checkpoint(tmp_path / "ckpts" / "checkpoint.6.safetensors").trainer_state["steps"] == [0, 6]
    resumed = _trainer(toy_cascade(), checkpoint_path=root)  # auto-resume from the newest
    assert resumed.steps.tolist() == [0, 6]
    for key, value in _state(trainer).items():
        torch.testing.assert_close(resumed.imagen.state_dict()[key], value, rtol=0, atol=0)
    # save / load to an explicit URL on the same filesystem, and to a plain path on it
    trainer.save(f"{root}/explicit.pt")
    again = _trainer(toy_cascade())
    again.load(f"{root}/explicit.pt")
    assert again.steps.tolist() == [0, 6]


def test_checkpoint_fs_object_and_fs_kwargs(tmp_path, toy_cascade):
    fs = MemoryFileSystem()
    folder = f"/imagen-{uuid.uuid4().hex}"
    trainer = _trainer(toy_cascade(), checkpoint_path=folder, checkpoint_fs=fs, checkpoint_every=1)
    _run(trainer, 1)
    assert fs.exists(f"{folder}/checkpoint.1.safetensors")
    # fs_kwargs go to the filesystem's constructor
    local = _trainer(toy_cascade(), checkpoint_path=f"file://{tmp_path}", fs_kwargs={"auto_mkdir": True})
    assert local.fs.auto_mkdir is True and local.checkpoint_path == tmp_path


def test_remote_write_is_write_then_move(monkeypatch, toy_cascade):
    """On a non-local filesystem the file is written under a temporary name and moved onto the
    destination, so a failure mid-write leaves the previous checkpoint in place."""
    fs = MemoryFileSystem()
    folder = f"/imagen-{uuid.uuid4().hex}"
    trainer = _trainer(toy_cascade(), checkpoint_path=folder, checkpoint_fs=fs)
    trainer.save(f"{folder}/c.safetensors")
    before = fs.cat_file(f"{folder}/c.safetensors")
    _run(trainer, 1)
    moves = []
    monkeypatch.setattr(fs, "mv", lambda src, dst, **kw: (moves.append((src, dst)), (_ for _ in ()).throw(OSError)))
    with pytest.raises(OSError):
        trainer.save(f"{folder}/c.safetensors")
    assert fs.cat_file(f"{folder}/c.safetensors") == before
    assert moves and "/.c.safetensors.partial-" in moves[0][0]
    assert sorted(fs.ls(folder, detail=False)) == [f"{folder}/c.safetensors"]  # the temporary is removed


def test_sample_max_batch_size_and_use_non_ema(toy_cascade):
    cascade = toy_cascade()
    trainer = _trainer(cascade, ema_update_after_step=0, ema_update_every=1)
    _run(trainer, 2)
    calls = []
    original = cascade.sample
    cascade.sample = lambda **kw: (calls.append(kw), original(**kw))[1]
    out = trainer.sample(batch_size=5, max_batch_size=2)
    assert out.shape[0] == 5 and [c["batch_size"] for c in calls] == [2, 2, 1]
    texts = ["a", "b", "c"]
    calls.clear()
    trainer.sample(texts=texts, cond_scale=(3.0, 1.0), max_batch_size=2)
    assert [c["texts"] for c in calls] == [["a", "b"], ["c"]] and all(c["cond_scale"] == (3.0, 1.0) for c in calls)
    calls.clear()
    init = torch.rand(3, 3, 4, 4)
    trainer.sample(texts=texts, init_images=(None, init), skip_steps=(0, 2), max_batch_size=2)
    assert [c["init_images"][1].shape[0] for c in calls] == [2, 1] and all(c["init_images"][0] is None for c in calls)
    assert torch.equal(torch.cat([c["init_images"][1] for c in calls]), init)
    online = trainer.sample(batch_size=1, use_non_ema=True)
    torch.testing.assert_close(online, original(batch_size=1))  # the online weights
    ema = trainer.sample(batch_size=1)
    assert not torch.equal(ema, online)


def test_uint8_and_numpy_images_are_scaled_as_the_reference(toy_cascade):
    cascade = toy_cascade(noisy=False)
    trainer = _trainer(cascade)
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    as_uint8 = trainer(images, unet_number=1)
    as_float = trainer(images.float() / 255, unet_number=1)
    as_numpy = trainer(images.numpy(), unet_number=1)
    assert as_uint8 == pytest.approx(as_float) and as_numpy == pytest.approx(as_float)
    assert isinstance(np.asarray(images), np.ndarray)


class _Config:
    def __init__(self, **fields):
        self.fields = fields

    def to_json(self):
        import json

        return json.dumps(self.fields, sort_keys=True)


def test_load_accepts_other_sampling_settings_and_refuses_other_training(tmp_path, toy_cascade):
    saved = toy_cascade()
    saved.config = _Config(kind="toy", timesteps=1000, dynamic_thresholding=True, cond_drop_prob=0.5)
    trainer = _trainer(saved)
    _run(trainer, 2)
    trainer.save(tmp_path / "c.safetensors")

    sampling = toy_cascade()
    sampling.config = _Config(kind="toy", timesteps=50, dynamic_thresholding=False, cond_drop_prob=0.5)
    other = _trainer(sampling)
    with pytest.warns(UserWarning, match="dynamic_thresholding, timesteps"):
        other.load(tmp_path / "c.safetensors")
    assert other.steps.tolist() == [0, 2]
    for key, value in _state(trainer).items():
        assert torch.equal(other.imagen.state_dict()[key], value)

    training = toy_cascade()
    training.config = _Config(kind="toy", timesteps=1000, dynamic_thresholding=True, cond_drop_prob=0.1)
    with pytest.raises(ValueError, match=r"cond_drop_prob: checkpoint 0\.5, trainer 0\.1"):
        _trainer(training).load(tmp_path / "c.safetensors")

    # auto-resume takes the same path
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "checkpoint.2.safetensors").write_bytes((tmp_path / "c.safetensors").read_bytes())
    sampling = toy_cascade()
    sampling.config = _Config(kind="toy", timesteps=25, dynamic_thresholding=True, cond_drop_prob=0.5)
    with pytest.warns(UserWarning, match="timesteps"):
        assert _trainer(sampling, checkpoint_path=folder).steps.tolist() == [0, 2]


def test_reference_helpers_and_extra_save_keywords(tmp_path, toy_cascade):
    trainer = _trainer(toy_cascade(), checkpoint_path=tmp_path, checkpoint_every=1, lr=(1e-3, 2e-3),
                       max_checkpoints_keep=0)
    assert trainer.get_lr(1) == pytest.approx(1e-3) and trainer.get_lr(2) == pytest.approx(2e-3)
    assert trainer.print_untrained_unets() == [1, 2] and not trainer.is_distributed
    _run(trainer, 2)
    assert trainer.print_untrained_unets() == [1]
    assert trainer.get_ema_unet(2) is trainer.emas["1"].ema_model and len(trainer.unets) == 2
    assert [p.name for p in trainer.all_checkpoints_sorted] == ["checkpoint.2.safetensors", "checkpoint.1.safetensors"]
    again = _trainer(toy_cascade(), checkpoint_path=tmp_path)
    assert again.steps.tolist() == [0, 2]
    again.load_from_checkpoint_folder(last_total_steps=1)
    assert again.steps.tolist() == [0, 1]
    trainer.save(tmp_path / "extra.safetensors", epoch=3, note="hello")
    loaded = again.load(tmp_path / "extra.safetensors")
    assert (loaded["epoch"], loaded["note"]) == (3, "hello")
    with pytest.raises(TypeError, match="JSON"):
        trainer.save(tmp_path / "bad.safetensors", tensor=torch.zeros(1))


def test_split_valid_fraction_range_as_the_reference(toy_cascade):
    _trainer(toy_cascade(), split_valid_fraction=0)  # the reference accepts [0, 1]
    with pytest.raises(ValueError, match="split_valid_fraction"):
        _trainer(toy_cascade(), split_valid_fraction=1.5)
    with pytest.raises(ValueError, match="split_valid_from_train"):
        _trainer(toy_cascade(), split_valid_fraction=0, split_valid_from_train=True)
