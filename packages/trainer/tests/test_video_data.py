"""Video folders: GIFs and frame folders read like image folders (resize rule, captions, bad files),
clips drawn from the augmentation seed, and a tiny video cascade trained from a folder."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from imagen.trainer import Dataset, ImagenTrainer, VideoDataset, collate

PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (255, 255, 255)]


def write_gif(path, count, size=(12, 8)):
    """A GIF whose frame k is one solid colour, PALETTE[k] (exact in a GIF's palette)."""
    frames = [Image.new("RGB", size, PALETTE[k]) for k in range(count)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def write_frames(folder, count, size=(20, 12), seed=0):
    """A folder of ``count`` random PNG frames."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{k:03d}.png")
    return folder


def colours(clip):
    """The solid colour of each frame of a (C, F, H, W) clip."""
    return [tuple(round(v * 255) for v in clip[:, f, 0, 0].tolist()) for f in range(clip.shape[1])]


def test_a_frame_folder_reads_frame_by_frame_like_the_image_dataset(tmp_path):
    write_frames(tmp_path / "videos" / "clip", 5)
    clip = VideoDataset(tmp_path / "videos", 8, frames=5, clip="first", augment_horizontal_flip=False)[0]
    images = Dataset(tmp_path / "videos" / "clip", 8, augment_horizontal_flip=False)
    assert clip.shape == (3, 5, 8, 8) and clip.dtype == torch.float32
    assert torch.equal(clip, torch.stack([images[k] for k in range(5)], dim=1))


def test_gif_clips_are_consecutive_frames_drawn_from_the_augmentation_seed(tmp_path):
    write_gif(tmp_path / "a.gif", 6)
    first = VideoDataset(tmp_path, 8, frames=4, clip="first")
    assert colours(first[0]) == PALETTE[:4]
    drawn = VideoDataset(tmp_path, 8, frames=4)  # clip="random"
    starts = set()
    for seed in range(24):
        clip = colours(drawn[(0, seed)])
        start = PALETTE.index(clip[0])
        assert clip == PALETTE[start:start + 4]  # a window of consecutive frames
        assert colours(drawn[(0, seed)]) == clip  # a pure function of the seed: a resume reads the same clip
        starts.add(start)
    assert starts == {0, 1, 2}  # every window of a 6-frame video
    assert len({PALETTE.index(colours(drawn[0])[0]) for _ in range(24)}) > 1  # a plain index draws too


def test_one_flip_for_every_frame_of_a_clip(tmp_path):
    write_frames(tmp_path / "clip", 3)
    plain = VideoDataset(tmp_path, 8, frames=3, augment_horizontal_flip=False)[0]
    flipping = VideoDataset(tmp_path, 8, frames=3)
    outs = [flipping[(0, seed)] for seed in range(16)]
    assert all(torch.equal(o, plain) or torch.equal(o, plain.flip(-1)) for o in outs)
    assert any(torch.equal(o, plain.flip(-1)) for o in outs) and any(torch.equal(o, plain) for o in outs)


def test_captions_follow_the_image_dataset_rules(tmp_path):
    write_gif(tmp_path / "a.gif", 2)
    write_frames(tmp_path / "b", 2)
    (tmp_path / "a.txt").write_text("a red square turning green")
    (tmp_path / "b.txt").write_text("noise")  # a frame folder b/ takes b.txt
    ds = VideoDataset(tmp_path, 8, frames=2)
    assert ds.has_captions and ds.captions == ["a red square turning green", "noise"]
    batch = collate([ds[(0, 0)], ds[(1, 0)]])
    assert batch["images"].shape == (2, 3, 2, 8, 8) and batch["texts"] == ds.captions  # (B, C, F, H, W)
    meta = tmp_path / "meta"
    meta.mkdir()
    write_gif(meta / "c.gif", 2)
    (meta / "metadata.jsonl").write_text(json.dumps({"file_name": "c.gif", "text": "from the metadata"}) + "\n")
    assert VideoDataset(meta, 8, frames=2).captions == ["from the metadata"]


def test_bad_and_short_videos_are_skipped_and_counted(tmp_path):
    write_gif(tmp_path / "good.gif", 4)
    write_gif(tmp_path / "short.gif", 2)
    (tmp_path / "garbage.gif").write_bytes(b"GIF89a but nothing else")
    frames = write_frames(tmp_path / "broken", 4)
    (frames / "001.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipped 3 bad"):
        ds = VideoDataset(tmp_path, 8, frames=3)
    assert [p.name for p in ds.paths] == ["good.gif"]
    reasons = dict(ds.skipped)
    assert set(reasons) == {str(tmp_path / n) for n in ("short.gif", "garbage.gif", "broken")}
    assert "2 frame(s), fewer than the 3" in reasons[str(tmp_path / "short.gif")]
    assert "001.png" in reasons[str(tmp_path / "broken")]
    with pytest.raises(ValueError, match="no usable video"):
        VideoDataset(tmp_path, 8, frames=5)


def test_a_video_that_breaks_after_construction_is_skipped_at_load_time(tmp_path):
    write_gif(tmp_path / "a.gif", 3)
    write_gif(tmp_path / "b.gif", 3)
    ds = VideoDataset(tmp_path, 8, frames=3, clip="first")
    (tmp_path / "a.gif").write_bytes((tmp_path / "a.gif").read_bytes()[:30])
    with pytest.warns(UserWarning, match="a.gif"):
        clip = ds[0]
    assert colours(clip) == PALETTE[:3] and ds.skipped[-1][0] == str(tmp_path / "a.gif")  # b.gif instead


def test_a_resumed_stream_reads_the_same_clips_as_an_uninterrupted_one(tmp_path):
    from imagen.trainer.streams import DatasetStream

    for i in range(3):
        write_gif(tmp_path / f"v{i}.gif", 7)
    dataset = VideoDataset(tmp_path, 8, frames=2)

    def stream():
        return DatasetStream(dataset, 2, num_replicas=1, rank=0, seed=5)

    straight = stream()
    batches = [next(straight) for _ in range(5)]  # 2.5 epochs of 3 videos
    interrupted = stream()
    for _ in range(3):
        next(interrupted)
    resumed = stream()
    resumed.load_state_dict(interrupted.state_dict())
    assert all(torch.equal(next(resumed), batch) for batch in batches[3:])
    clips = {tuple(colours(clip)) for batch in batches for clip in batch}
    assert len(clips) > 3  # different windows of the 7 frames were drawn


@pytest.mark.parametrize("bad", [dict(frames=0), dict(frames=True), dict(clip="strided")])
def test_bad_arguments_name_the_parameter(tmp_path, bad):
    write_gif(tmp_path / "a.gif", 2)
    with pytest.raises(ValueError, match=next(iter(bad))):
        VideoDataset(tmp_path, 8, **{"frames": 2, **bad})


def test_a_tiny_video_cascade_trains_from_a_gif_folder(tmp_path):
    from imagen.cascade import Imagen
    from imagen.unets import Unet3D

    for i in range(4):
        write_gif(tmp_path / f"v{i}.gif", 3 + i % 2)
    (tmp_path / "bad.gif").write_bytes(b"not a gif")
    with pytest.warns(UserWarning, match="bad.gif"):
        dataset = VideoDataset(tmp_path, 8, frames=3)
    assert len(dataset) == 4 and len(dataset.skipped) == 1
    unet = Unet3D(dim=8, dim_mults=(1, 2), layer_attns=False, layer_cross_attns=False, attn_heads=2, attn_dim_head=8)
    imagen = Imagen(unets=unet, image_sizes=8, condition_on_text=False, timesteps=3)
    trainer = ImagenTrainer(imagen, verbose=False, checkpoint_every=None)
    trainer.add_train_dataset(dataset, batch_size=2)
    losses = [trainer.train_step(unet_number=1) for _ in range(2)]
    assert all(np.isfinite(losses)) and trainer.steps.tolist() == [2]
