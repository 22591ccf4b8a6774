"""A real two-process run on CPU through ``accelerate launch`` on a tiny cascade.

accelerate 1.x runs ``--cpu --num_processes 2`` through mpirun only; without it, ``--multi_gpu`` on a
machine without (visible) GPUs starts two gloo processes (accelerate's MULTI_CPU), and the script
asks for the CPU with ``accelerate_cpu=True``."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    from imagen.cascade import Imagen
    from imagen.trainer import Dataset, ImagenTrainer
    from imagen.unets import Unet

    phase, root = sys.argv[1], Path(sys.argv[2])
    folder = root / "images"
    if phase == "train":
        folder.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(8):  # every rank writes the same files: harmless, and no barrier needed
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")

    def flat(module):
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    rank_seed = 100 + int(__import__("os").environ.get("RANK", 0))
    torch.manual_seed(rank_seed)  # different initial weights per rank: the trainer must unify them
    unet = Unet(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=False, layer_cross_attns=False)
    imagen = Imagen(condition_on_text=False, unets=unet, image_sizes=16, timesteps=3)
    trainer = ImagenTrainer(imagen, verbose=False, checkpoint_path=root / "ckpt", checkpoint_every=3,
                            accelerate_cpu=True, ema_update_after_step=0, ema_update_every=1)
    report = {"rank": trainer.accelerator.process_index, "world": trainer.accelerator.num_processes,
              "start_steps": trainer.steps.tolist(), "same_after_update": []}
    trainer.add_train_dataset(Dataset(folder, 16), batch_size=4)  # 2 images per rank and step
    ddp = trainer.stages[0].prepare(trainer.accelerator)
    report["ddp"] = isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
    report["allreduces"] = []
    calls = [0]

    def counting_allreduce(state, bucket):
        calls[0] += 1
        return allreduce_hook(None, bucket)

    ddp.register_comm_hook(None, counting_allreduce)
    if phase == "train":
        for step in range(3):
            before = calls[0]
            trainer.train_step(unet_number=1, max_batch_size=None if step == 0 else 1)  # then 2 chunks
            report["allreduces"].append(calls[0] - before)
            weights = trainer.accelerator.gather(flat(trainer.imagen).unsqueeze(0))
            ema = trainer.accelerator.gather(flat(trainer.emas["0"]).unsqueeze(0))
            report["same_after_update"].append(bool(torch.equal(weights[0], weights[1]) and
                                                    torch.equal(ema[0], ema[1])))
    else:
        ckpt = sorted((root / "ckpt").iterdir())[-1]
        from imagen.trainer import load_checkpoint
        saved = load_checkpoint(ckpt).with_prefix("imagen.")
        report["resumed_equals_saved"] = all(torch.equal(v, saved[k]) for k, v in trainer.imagen.state_dict().items())
        trainer.train_step(unet_number=1)
        weights = trainer.accelerator.gather(flat(trainer.imagen).unsqueeze(0))
        report["same_after_update"].append(bool(torch.equal(weights[0], weights[1])))
    report["end_steps"] = trainer.steps.tolist()
    (root / f"report-{phase}-{report['rank']}.json").write_text(json.dumps(report))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("accelerate") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")),
    reason="accelerate CLI not installed",
)
def test_two_processes_train_identically_checkpoint_once_and_resume(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    launcher = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    for phase in ("train", "resume"):
        result = subprocess.run(
            [
                launcher,
                "launch",
                "--multi_gpu",
                "--num_processes",
                "2",
                "--num_machines",
                "1",
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
                "--main_process_port",
                "0",
                str(script),
                phase,
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    train = [json.loads((tmp_path / f"report-train-{r}.json").read_text()) for r in range(2)]
    resume = [json.loads((tmp_path / f"report-resume-{r}.json").read_text()) for r in range(2)]
    assert {r["world"] for r in train} == {2}
    assert all(r["same_after_update"] == [True, True, True] for r in train)
    assert all(r["ddp"] for r in train + resume)  # the trained U-Net went through accelerate.prepare (DDP)
    # gradients are all-reduced once per step: two chunks (no_sync on the first) cost what one does
    assert all(r["allreduces"][0] > 0 and len(set(r["allreduces"])) == 1 for r in train), train
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["checkpoint.3.safetensors"]
    assert all(r["start_steps"] == [3] and r["resumed_equals_saved"] for r in resume)
    assert all(r["same_after_update"] == [True] and r["end_steps"] == [4] for r in resume)
