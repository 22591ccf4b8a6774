"""`imagen train` on a video cascade: the dataset folder is read as videos (GIFs, frame folders)."""

import json

import pytest
from cli_testing import TINY_UNET, run_cli
from PIL import Image

from imagen.trainer import load_checkpoint

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def _video_folder(folder):
    folder.mkdir()
    for i, caption in enumerate(["a red circle", "a blue square", "a green circle"]):
        frames = [Image.new("RGB", (10, 8), COLOURS[(i + k) % 5]) for k in range(3 + i)]
        frames[0].save(folder / f"v{i}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
        (folder / f"v{i}.txt").write_text(caption)
    clip = folder / "frames"  # a folder of frame images is a video too, captioned by frames.txt
    clip.mkdir()
    for k in range(4):
        Image.new("RGB", (8, 8), COLOURS[k]).save(clip / f"{k:02d}.png")
    (folder / "frames.txt").write_text("a red square")
    (folder / "bad.gif").write_bytes(b"GIF89a, truncated")
    (folder / "bad.txt").write_text("a broken video")
    return folder


def _video_config(tmp_path, tiny_t5, **dataset):
    imagen = dict(kind="Imagen", video=True, unets=[TINY_UNET], image_sizes=[8], text_encoder_name=str(tiny_t5),
                  text_embed_dim=16, cond_drop_prob=0.2, timesteps=3)
    document = dict(imagen=imagen,
                    trainer=dict(warmup_steps=1, checkpoint_path=str(tmp_path / "checkpoints"), checkpoint_every=None),
                    dataset={"folder": str(_video_folder(tmp_path / "videos")), "batch_size": 2, "video_frames": 2,
                             **dataset})
    path = tmp_path / "video.json"
    path.write_text(json.dumps(document))
    return path


def test_a_video_cascade_trains_from_a_folder_of_gifs_and_frame_folders(tmp_path, tiny_t5):
    config = _video_config(tmp_path, tiny_t5)
    with pytest.warns(UserWarning, match=r"VideoDataset.*skipped 1 bad.*bad\.gif"):  # skipped, named; training goes on
        assert run_cli("train", "--config", str(config), "--steps", "2") == 0
    state = load_checkpoint(tmp_path / "checkpoints" / "checkpoint.2.safetensors").trainer_state
    assert state["steps"] == [2]
    out = tmp_path / "out"
    assert run_cli("sample", "--model", str(tmp_path / "checkpoints"), "a red circle", "--video-frames", "2",
                   "--output-dir", str(out)) == 0
    assert Image.open(out / "a_red_circle.gif").n_frames == 2


def test_frames_that_a_stage_cannot_downsample_are_one_line(tmp_path, tiny_t5, capsys):
    config = _video_config(tmp_path, tiny_t5, video_frames=3)
    document = json.loads(config.read_text())
    document["imagen"]["temporal_downsample_factor"] = 2
    config.write_text(json.dumps(document))
    assert run_cli("train", "--config", str(config), "--steps", "1") == 2
    err = capsys.readouterr().err
    assert "dataset.video_frames 3" in err and "temporal_downsample_factor 2" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "checkpoints").exists()


def test_encode_text_reads_the_video_captions_and_training_uses_the_cache(tmp_path, tiny_t5):
    config = _video_config(tmp_path, tiny_t5, text_embedding_cache=str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="bad.gif"):
        assert run_cli("encode-text", "--config", str(config)) == 0
    from imagen.text import TextEmbeddingCache

    assert len(TextEmbeddingCache(tmp_path / "cache")) == 4  # three GIFs and the frame folder; not bad.gif
    with pytest.warns(UserWarning, match="bad.gif"):
        assert run_cli("train", "--config", str(config), "--steps", "1") == 0
