"""Real multi-process training from webdataset shards with embeddings, through ``accelerate launch``
on CPU (gloo; see test_multiprocess.py for why ``--multi_gpu`` with no visible GPU): every rank
holds the same weights after every update, and a run stopped at a checkpoint and resumed ends with
the weights of the run that went straight through.

The 2-process version always runs; the 4-process one over 2,048 images is opt-in
(``IMAGEN_LONG_TESTS=1``)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from imagen.trainer import write_shards

SCRIPT = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path

    import torch

    from imagen.cascade import Imagen
    from imagen.trainer import ImagenTrainer, ShardDataset
    from imagen.unets import Unet

    index, root, steps, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    def flat(module):
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def run(folder):
        torch.manual_seed(100 + int(__import__("os").environ.get("RANK", 0)))  # the trainer must unify the ranks
        unet = Unet(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=False, layer_cross_attns=False,
                    attn_heads=2, attn_dim_head=8)
        imagen = Imagen(unets=unet, image_sizes=16, timesteps=3, text_embed_dim=8)
        trainer = ImagenTrainer(imagen, verbose=False, checkpoint_path=folder, checkpoint_every=3,
                                accelerate_cpu=True, ema_update_after_step=0, ema_update_every=1)
        world = trainer.accelerator.num_processes
        report = {"rank": trainer.accelerator.process_index, "world": world, "start_steps": trainer.steps.tolist(),
                  "same_after_update": []}
        trainer.add_train_dataset(ShardDataset(index, 16, shuffle_window=16), batch_size=4 * world,
                                  num_workers=workers, prefetch_factor=2 if workers else None)
        while trainer.num_steps_taken() < steps:
            trainer.train_step(unet_number=1)
            weights = trainer.accelerator.gather(flat(trainer.imagen).unsqueeze(0))
            ema = trainer.accelerator.gather(flat(trainer.emas["0"]).unsqueeze(0))
            report["same_after_update"].append(all(torch.equal(weights[0], w) and torch.equal(ema[0], e)
                                                   for w, e in zip(weights, ema)))
        report["end_steps"] = trainer.steps.tolist()
        report["position"] = trainer.data.state_dict()["train"]
        report["weights"] = flat(trainer.imagen).tolist()
        report["ema"] = flat(trainer.emas["0"]).tolist()
        return trainer, report

    trainer, straight = run(root / "straight")  # checkpoints every 3 steps
    if trainer.is_main:  # the resumed run starts from the straight run's first checkpoint
        (root / "resumed").mkdir()
        shutil.copy(root / "straight" / "checkpoint.3.safetensors", root / "resumed")
    trainer.accelerator.wait_for_everyone()
    del trainer
    _, resumed = run(root / "resumed")
    (root / f"report-{straight['rank']}.json").write_text(json.dumps({"straight": straight, "resumed": resumed}))
    """
)


def _launcher():
    return shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")


def _launch(script, processes, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    command = [_launcher(), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(script),
               *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    where = max(result.stderr.find("Traceback"), 0)  # the first rank's own error, not the launcher's summary
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[where:where + 4000]


def _pairs(count):
    rng = np.random.default_rng(0)
    for i in range(count):
        yield rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), str(i), torch.randn(1 + i % 4, 8)


def _train_stop_resume(tmp_path, processes, images, steps, workers):
    index = write_shards(_pairs(images), tmp_path / "shards", samples_per_shard=max(8, images // 16))
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    _launch(script, processes, index, tmp_path, steps, workers)
    reports = [json.loads((tmp_path / f"report-{r}.json").read_text()) for r in range(processes)]
    for report in reports:
        straight, resumed = report["straight"], report["resumed"]
        assert straight["world"] == processes and straight["start_steps"] == [0] and resumed["start_steps"] == [3]
        assert len(straight["same_after_update"]) == steps and all(straight["same_after_update"])
        assert len(resumed["same_after_update"]) == steps - 3 and all(resumed["same_after_update"])
        assert straight["end_steps"] == resumed["end_steps"] == [steps]
        assert resumed["weights"] == straight["weights"] and resumed["ema"] == straight["ema"]  # bit for bit
        assert resumed["position"] == straight["position"]
        position = straight["position"]
        assert position["ranks"] == [[position["epoch"], position["batch"]]] * processes  # gathered from every rank
    assert reports[0]["straight"]["weights"] == reports[-1]["straight"]["weights"]
    assert (tmp_path / "resumed" / f"checkpoint.{steps}.safetensors").is_file()


@pytest.mark.skipif(not os.path.exists(_launcher()), reason="accelerate CLI not installed")
def test_two_processes_train_from_shards_identically_and_resume_exactly(tmp_path):
    _train_stop_resume(tmp_path, processes=2, images=96, steps=6, workers=1)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("IMAGEN_LONG_TESTS") != "1", reason="opt-in: IMAGEN_LONG_TESTS=1")
@pytest.mark.skipif(not os.path.exists(_launcher()), reason="accelerate CLI not installed")
def test_four_processes_train_from_2048_shard_images_and_resume_exactly(tmp_path):
    _train_stop_resume(tmp_path, processes=4, images=2048, steps=9, workers=2)
