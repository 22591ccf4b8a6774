"""`cascade-cli train` under a two-process ``accelerate launch`` (CPU, gloo) with TensorBoard: only
rank 0 writes event files, prints its report and shows a bar, under DDP and FSDP2. Opt-in (``IMAGEN_LONG_TESTS=1``):
the trainer's own two-process test (imagen-trainer's test_tracking_multiprocess.py) runs in CI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from cli_testing import tiny_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("IMAGEN_LONG_TESTS") != "1", reason="opt-in: IMAGEN_LONG_TESTS=1")
@pytest.mark.parametrize("mode", [["--multi_gpu"], ["--use_fsdp", "--fsdp_version", "2"]], ids=["ddp", "fsdp2"])
def test_two_process_cli_run_writes_and_prints_once(tmp_path, tiny_t5, image_folder, mode):
    config = tiny_config(tiny_t5, image_folder, tmp_path / "checkpoints")
    config["trainer"].update(log_with="tensorboard", project_dir=str(tmp_path / "runs"), log_every=1)
    config["dataset"]["batch_size"] = 2
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    launcher = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="",
               ACCELERATE_USE_CPU="true")
    result = subprocess.run(
        [launcher, "launch", *mode, "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "0", "-m", "imagen.cli.main", "train", "--config",
         str(path), "--unet", "1", "--steps", "2"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert result.stdout.count("trained unet 1 for 2 steps") == 1, result.stdout
    assert len(re.findall(r"unet 1:\s+0%", result.stderr)) == 1, result.stderr[-4000:]
    assert len(list((tmp_path / "runs" / "imagen").glob("events.out.tfevents.*"))) == 1
    log = EventAccumulator(str(tmp_path / "runs" / "imagen"), size_guidance={"scalars": 0})
    log.Reload()
    assert [e.step for e in log.Scalars("train/loss/unet1")] == [1, 2]
    if "--use_fsdp" in mode:  # FSDP2 writes per-stage checkpoint folders by default
        assert (tmp_path / "checkpoints" / "checkpoint.2" / "unet.1.safetensors").is_file()
