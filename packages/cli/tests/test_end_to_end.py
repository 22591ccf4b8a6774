"""The CLI end to end on tiny sizes: config, train, resume, sample, encode-text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_testing import run_cli, tiny_config
from PIL import Image

from imagen.cascade import load_imagen_from_checkpoint
from imagen.cli import CliConfig, default_config, prompt_filename
from imagen.trainer import latest_checkpoint, load_checkpoint


def test_config_writes_the_default_config_that_reads_back(tmp_path):
    path = tmp_path / "configs" / "config.json"
    assert run_cli("config", "--path", str(path)) == 0
    document = json.loads(path.read_text())
    assert set(document) == {"imagen", "trainer", "dataset"}
    config = CliConfig.read(path)
    assert config == default_config()
    assert config.to_dict() == document
    assert config.imagen.create().num_unets == 2


def test_train_resume_and_sample(config_file, tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    assert run_cli("train", "--config", str(config_file), "--unet", "1", "--steps", "2") == 0
    first = latest_checkpoint(checkpoints)
    assert load_checkpoint(first).trainer_state["steps"] == [2, 0]
    # a second run continues from the checkpoint; the reference's spelling --epoches works (6 images / 3 = 2 steps)
    assert run_cli("train", "--config", str(config_file), "--unet", "2", "--epoches", "1", "--resume") == 0
    state = load_checkpoint(latest_checkpoint(checkpoints)).trainer_state
    assert state["steps"] == [2, 2]
    out = tmp_path / "samples"
    prompts = ["a red circle in the top left", "a squirrel raiding the birdfeeder!", "a red circle in the top left"]
    code = run_cli("sample", "--model", str(checkpoints), *prompts, "--steps", "3,2", "--sampler", "ddim",
                   "--cond-scale", "2.5", "--seed", "7", "--batch-size", "2", "--output-dir", str(out))
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a_red_circle_in_the_top_left.png", "a_red_circle_in_the_top_left_1.png",
                     "a_squirrel_raiding_the_birdfeeder.png"]
    for name in names:
        assert Image.open(out / name).size == (16, 16)
    # prompt i uses seed + i whatever the batch: same prompt, same seed -> same picture
    again = tmp_path / "again"
    assert run_cli("sample", "--model", str(latest_checkpoint(checkpoints)), prompts[1], "--steps", "3,2",
                   "--sampler", "ddim", "--cond-scale", "2.5", "--seed", "8", "--output-dir", str(again)) == 0
    a = torch.tensor(list(Image.open(out / names[2]).tobytes()))
    b = torch.tensor(list(Image.open(again / names[2]).tobytes()))
    assert torch.equal(a, b)


def test_checkpoint_folders_train_resume_and_sample(config_file, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    layout = ("--trainer.checkpoint_layout", "folder")
    assert run_cli("train", "--config", str(config_file), *layout, "--unet", "1", "--steps", "2") == 0
    assert run_cli("train", "--config", str(config_file), *layout, "--unet", "2", "--steps", "1", "--resume") == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint.2", "checkpoint.3"]  # total steps
    assert (checkpoints / "checkpoint.3" / "unet.2.safetensors").is_file()
    out = tmp_path / "samples"
    assert run_cli("sample", "--model", str(checkpoints), "a red circle", "--steps", "2,2", "--sampler", "ddim",
                   "--output-dir", str(out)) == 0
    assert Image.open(out / "a_red_circle.png").size == (16, 16)


def test_resume_continues_exactly_like_one_run(config_file, tmp_path, tiny_t5, image_folder):
    assert run_cli("train", "--config", str(config_file), "--steps", "2") == 0
    assert run_cli("train", "--config", str(config_file), "--steps", "2") == 0
    straight = tmp_path / "straight.json"
    straight.write_text(json.dumps(tiny_config(tiny_t5, image_folder, tmp_path / "straight")))
    assert run_cli("train", "--config", str(straight), "--steps", "4") == 0
    resumed = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    once = load_checkpoint(latest_checkpoint(tmp_path / "straight"))
    assert resumed.trainer_state["steps"] == once.trainer_state["steps"] == [4, 0]
    for key, value in once.tensors.items():
        if key.startswith(("imagen.", "ema_imagen.")):
            assert torch.equal(value, resumed.tensors[key]), key


def test_encode_text_then_train_from_the_cache(config_file, tmp_path):
    document = json.loads(config_file.read_text())
    document["dataset"]["text_embedding_cache"] = str(tmp_path / "cache")
    config_file.write_text(json.dumps(document))
    assert run_cli("encode-text", "--config", str(config_file)) == 0
    assert (tmp_path / "cache" / "index.json").is_file()
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 0


def test_elucidated_cascade_and_save_pretrained_folder(tmp_path, tiny_t5, image_folder):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config(tiny_t5, image_folder, tmp_path / "ck", kind="ElucidatedImagen")))
    assert run_cli("train", "--config", str(path), "--steps", "1") == 0
    cascade = load_imagen_from_checkpoint(latest_checkpoint(tmp_path / "ck"))
    cascade.save_pretrained(tmp_path / "pretrained")
    assert run_cli("sample", "--model", str(tmp_path / "pretrained"), "a blue square in the center",
                   "--steps", "6", "--output-dir", str(tmp_path / "out")) == 0  # heun (the default) needs >= 6
    assert (tmp_path / "out" / "a_blue_square_in_the_center.png").is_file()


def test_video_cascade_writes_a_gif_and_its_frames(tmp_path, tiny_t5):
    from imagen.cascade import Imagen
    from imagen.unets import Unet3D

    unet = Unet3D(dim=8, dim_mults=(1, 2), layer_attns=False, layer_cross_attns=False, attn_heads=2,
                  attn_dim_head=8, cond_dim=16, init_cross_embed=False, init_conv_kernel_size=3,
                  use_global_context_attn=False, attn_pool_text=False, attend_at_middle=False)
    cascade = Imagen(unet, image_sizes=8, text_encoder_name=str(tiny_t5), text_embed_dim=16, timesteps=2)
    cascade.save_pretrained(tmp_path / "video")
    out = tmp_path / "out"
    assert run_cli("sample", "--model", str(tmp_path / "video"), "a red circle", "--video-frames", "3",
                   "--output-dir", str(out)) == 0
    gif = Image.open(out / "a_red_circle.gif")
    assert gif.n_frames == 3
    assert sorted(p.name for p in (out / "a_red_circle").iterdir()) == [f"frame_00{i}.png" for i in range(3)]


def test_prompt_filename():
    assert prompt_filename("a squirrel raiding the birdfeeder") == "a_squirrel_raiding_the_birdfeeder"
    assert prompt_filename("  ?? ") == "sample"
    taken = set()
    assert [prompt_filename("x y", taken) for _ in range(3)] == ["x_y", "x_y_1", "x_y_2"]
    assert len(prompt_filename("a" * 500)) == 120


def test_console_script_runs_as_a_subprocess(tmp_path):
    script = shutil.which("cascade-cli", path=str(Path(sys.executable).parent))
    assert script is not None
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([script, "config", "--path", str(tmp_path / "c.json")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert CliConfig.read(tmp_path / "c.json") == default_config()
    alias = Path(script).with_name("imagen")
    if "imagen.cli" not in alias.read_text(errors="replace"):
        pytest.skip("the `imagen` command of this environment is imagen-pytorch's (installed after ours, it "
                    "replaced the alias; `cascade-cli` is unaffected)")
    done = subprocess.run([str(alias), "train", "--config", str(tmp_path / "missing.json")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.json" in lines[0] and lines[0].startswith("imagen train: error:")


@pytest.mark.parametrize("kind", ["Imagen"])
def test_default_config_matches_the_demo_architecture(kind):
    from imagen.cascade import CascadeConfig
    from imagen.cli import demo_cascade_config

    assert default_config().imagen.unets == CascadeConfig.from_dict(demo_cascade_config("x")).unets


def test_per_stage_guidance_and_refining_super_resolution(config_file, tmp_path):
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 0
    out = tmp_path / "out"
    assert run_cli("sample", "--model", str(tmp_path / "checkpoints"), "a red circle", "a blue square",
                   "--cond-scale", "4,1", "--skip-steps", "0,2", "--steps", "3,4", "--output-dir", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_blue_square.png", "a_red_circle.png"]
    # one scale for all stages, no skips: the single-call path gives the same picture as the staged one
    # would not (different noise streams), so only check that it runs and sizes are right
    assert run_cli("sample", "--model", str(tmp_path / "checkpoints"), "a red circle", "--cond-scale", "2",
                   "--steps", "2", "--output-dir", str(tmp_path / "single")) == 0
    assert Image.open(tmp_path / "single" / "a_red_circle.png").size == (16, 16)
