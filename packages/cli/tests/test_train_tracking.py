"""`cascade-cli train` with trackers: TensorBoard event files read back with tensorboard's reader
(scalars, validation, a captioned sample grid, the config as hyper-parameters); a tracker that is
not installed is one line, exit 2, nothing written."""

from __future__ import annotations

import json

import yaml
from cli_testing import run_cli, tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imagen.cli import shapes


def test_train_logs_scalars_validation_and_sample_grids(tmp_path, tiny_t5, image_folder, capsys):
    valid = shapes.write_dataset(tmp_path / "valid", 3, 16)
    config = tiny_config(tiny_t5, image_folder, tmp_path / "checkpoints")
    config["trainer"].update(log_with="tensorboard", project_dir=str(tmp_path / "runs"), log_every=1, sample_every=2,
                             sample_prompts=["a red circle in the top left"], sample_steps=2, validate_every=2,
                             sample_folder=str(tmp_path / "grids"))
    config["dataset"]["valid_folder"] = str(valid)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert run_cli("train", "--config", str(path), "--unet", "1", "--steps", "2") == 0
    assert capsys.readouterr().out.count("trained unet 1 for 2 steps") == 1
    log = EventAccumulator(str(tmp_path / "runs" / "imagen"), size_guidance={"scalars": 0, "images": 0})
    log.Reload()
    assert [e.step for e in log.Scalars("train/loss/unet1")] == [1, 2]
    assert [e.step for e in log.Scalars("train/lr/unet1")] == [1, 2]
    assert [e.step for e in log.Scalars("valid/loss/unet1")] == [2]
    assert [e.step for e in log.Images("samples/unet1")] == [2]
    assert [p.name for p in (tmp_path / "grids").iterdir()] == ["sample-unet1-2.png"]
    (hparams,) = (tmp_path / "runs" / "imagen").glob("*/hparams.yml")
    stored = yaml.safe_load(hparams.read_text())
    assert stored["dataset.valid_folder"] == str(valid) and stored["trainer.log_every"] == 1


def test_a_tracker_that_is_not_installed_is_one_line_and_writes_nothing(tmp_path, tiny_t5, image_folder, capsys):
    config = tiny_config(tiny_t5, image_folder, tmp_path / "checkpoints")
    config["trainer"].update(log_with="wandb", project_dir=str(tmp_path / "runs"))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert run_cli("train", "--config", str(path), "--unet", "1", "--steps", "1") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "tracker 'wandb' is not installed" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
