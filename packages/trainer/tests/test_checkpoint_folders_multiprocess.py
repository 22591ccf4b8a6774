"""Per-stage checkpoint folders across processes: two stage runs in separate processes merged
into a cascade that samples with their weights, and a real two-process gloo run (``accelerate
launch``) whose sharded save (each rank writes its own DCP part) resumes bit for bit."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from imagen.cascade import load_imagen_from_checkpoint, read_container
from imagen.trainer import merge_stage_checkpoints

COMMON = """
import json, sys
from pathlib import Path

import torch

from imagen.cascade import Imagen
from imagen.trainer import ImagenTrainer
from imagen.unets import Unet


def cascade():
    torch.manual_seed(0)
    unets = [Unet(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=False, layer_cross_attns=False)
             for _ in range(2)]
    for unet in unets:  # a fresh U-Net outputs exactly zero: randomise its last layer
        torch.nn.init.normal_(unet.final_conv.weight, std=0.05)
    return Imagen(condition_on_text=False, unets=unets, image_sizes=(8, 16), timesteps=3)


def flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])
"""

KILLED_SAVE = COMMON + textwrap.dedent("""
    import os
    import signal

    import imagen.trainer.checkpoint_folders as folders

    root = Path(sys.argv[1])
    trainer = ImagenTrainer(cascade(), verbose=False, checkpoint_path=root, checkpoint_every=1,
                            checkpoint_layout="folder")
    trainer(torch.rand(2, 3, 8, 8), unet_number=1)
    trainer.update(1)  # checkpoint.1, complete
    folders.replace_folder = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # dies before the rename
    trainer(torch.rand(2, 3, 8, 8), unet_number=1)
    trainer.update(1)
    """)

STAGE_RUN = COMMON + textwrap.dedent("""
    unet_number, root = int(sys.argv[1]), Path(sys.argv[2])
    trainer = ImagenTrainer(cascade(), verbose=False, checkpoint_path=root, checkpoint_every=2,
                            checkpoint_layout="folder", seed=unet_number, ema_update_after_step=0,
                            ema_update_every=1)
    g = torch.Generator().manual_seed(unet_number)
    size = 8 if unet_number == 1 else 16
    for _ in range(2):
        trainer(torch.rand(2, 3, size, size, generator=g), unet_number=unet_number)
        trainer.update(unet_number)
    """)

RUN = COMMON + textwrap.dedent("""
    import os
    import shutil

    import numpy as np
    from PIL import Image
    from torch.distributed.tensor import DTensor

    from imagen.trainer import Dataset

    root = Path(sys.argv[1])
    folder = root / "images"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):  # every rank writes the same files: harmless
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")

    def full(tensor):  # a sharded (FSDP2) tensor gathered: a collective, every rank in the same order
        return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor

    def flat_full(module):
        return torch.cat([full(p).detach().reshape(-1) for p in module.parameters()])

    def trainer(ckpt, checkpoint_every=None):
        t = ImagenTrainer(cascade(), verbose=False, checkpoint_path=ckpt, checkpoint_every=checkpoint_every,
                          checkpoint_layout="folder", accelerate_cpu=True, ema_update_after_step=0,
                          ema_update_every=1)
        t.add_train_dataset(Dataset(folder, 16), batch_size=4)
        return t

    def scenario(name):
        ckpt = root / name
        straight = trainer(ckpt, checkpoint_every=2)
        for _ in range(4):
            straight.train_step(unet_number=2, max_batch_size=1)  # two chunks a step
        straight.accelerator.wait_for_everyone()
        if straight.is_main:  # keep checkpoint.2 only: the resume starts there
            shutil.rmtree(ckpt / "checkpoint.4")
        straight.accelerator.wait_for_everyone()
        resumed = trainer(ckpt)
        report = {"rank": resumed.accelerator.process_index, "world": resumed.accelerator.num_processes,
                  "start_steps": resumed.steps.tolist()}
        for _ in range(2):
            resumed.train_step(unet_number=2, max_batch_size=1)
        a, b = straight.stages[1], resumed.stages[1]
        params = list(b.unet.parameters())
        report["sharded"] = all(isinstance(p, DTensor) for p in params)
        report["ema_sharded"] = all(isinstance(p, DTensor) for p in b.ema.ema_model.parameters())
        report["local_fraction"] = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel()
                                       for p in params) / sum(p.numel() for p in params)
        report["weights_equal"] = bool(torch.equal(flat_full(a.unet), flat_full(b.unet)))
        report["ema_equal"] = bool(torch.equal(flat_full(a.ema.ema_model), flat_full(b.ema.ema_model)))
        sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
        report["optim_equal"] = sa.keys() == sb.keys() and all(
            torch.equal(full(sa[p][k]), full(sb[p][k])) for p in sa for k in sa[p])
        report["generators_equal"] = all(torch.equal(straight._generators[n].get_state(), g.get_state())
                                         for n, g in resumed._generators.items())
        weights = resumed.accelerator.gather(flat_full(b.unet).unsqueeze(0))
        report["ranks_equal"] = bool(torch.equal(weights[0], weights[1]))
        report["end_steps"] = resumed.steps.tolist()
        resumed.load(ckpt / "checkpoint.2")  # again, now into the prepared (under FSDP2: sharded) stage
        for _ in range(2):
            resumed.train_step(unet_number=2, max_batch_size=1)
        sb = b.optimizer.state_dict()["state"]
        report["reload_equal"] = bool(torch.equal(flat_full(a.unet), flat_full(b.unet))) and bool(
            torch.equal(flat_full(a.ema.ema_model), flat_full(b.ema.ema_model))) and all(
            torch.equal(full(sa[p][k]), full(sb[p][k])) for p in sa for k in sa[p])
        samples = root / name / "samples"  # fit's sample grids: under FSDP2 every rank samples, the main one writes
        resumed.fit(1, unet_number=2, sample_every=1, sample_folder=samples, sample_kwargs={"batch_size": 1})
        (root / f"report-{name}-{report['rank']}.json").write_text(json.dumps(report))

    def failing_disk():  # rank 1's stage file hits a full disk: every rank raises, none hangs
        import errno

        import imagen.trainer.checkpoint_folders as folders

        ckpt = root / "ddp"
        t = trainer(ckpt)
        if t.accelerator.process_index == 1:
            folders.write_part = lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left"))
        try:
            t.save(ckpt / "checkpoint.9")
            raised = None
        except OSError as error:
            raised = str(error)
        t.accelerator.wait_for_everyone()
        report = {"raised": raised, "left": sorted(p.name for p in ckpt.iterdir())}
        (root / f"report-disk-{t.accelerator.process_index}.json").write_text(json.dumps(report))

    scenario("fsdp")  # launched with --use_fsdp --fsdp_version 2: the trainer shards the stage
    os.environ["ACCELERATE_USE_FSDP"] = "false"  # the same processes, DDP (read when a stage is prepared)
    scenario("ddp")
    failing_disk()
    """)


def test_two_stage_runs_in_separate_processes_merge_and_sample(tmp_path):
    """Stage 1 and stage 2 trained by two processes (per-stage folders), merged: the merged
    folder's stages equal each run's (EMA export and online weights), and the merged cascade
    samples exactly what a cascade assembled from the two runs' stages samples."""
    script = tmp_path / "stage_run.py"
    script.write_text(STAGE_RUN)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    runs = {n: tmp_path / f"run{n}" for n in (1, 2)}
    procs = [subprocess.Popen([sys.executable, str(script), str(n), str(runs[n])], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in runs]
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:]
    chosen = merge_stage_checkpoints(tmp_path / "merged", [runs[1], runs[2]])
    assert chosen == {1: str(runs[1] / "checkpoint.2"), 2: str(runs[2] / "checkpoint.2")}
    merged = load_imagen_from_checkpoint(tmp_path / "merged")
    own = {n: load_imagen_from_checkpoint(runs[n] / "checkpoint.2") for n in runs}
    for n in runs:
        expected = own[n].unets[n - 1].state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in merged.unets[n - 1].state_dict().items())
        assert (tmp_path / "merged" / f"unet.{n}.safetensors").read_bytes() == \
            (runs[n] / "checkpoint.2" / f"unet.{n}.safetensors").read_bytes()
    assert not torch.equal(own[1].unets[1].final_conv.weight, merged.unets[1].final_conv.weight)  # choice matters
    assembled = own[1]
    assembled.unets[1].load_state_dict(own[2].unets[1].state_dict())
    kwargs = dict(batch_size=2, use_tqdm=False, steps=2)
    images = merged.sample(generator=torch.Generator().manual_seed(7), **kwargs)
    assert images.shape == (2, 3, 16, 16)
    assert torch.equal(images, assembled.sample(generator=torch.Generator().manual_seed(7), **kwargs))


def test_a_save_killed_before_its_rename_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL after every part of checkpoint.2 is written but before the folder is renamed: the
    folder holds checkpoint.1 and a partial folder; a new trainer removes the partial folder (its
    process is gone) and resumes from checkpoint.1."""
    from imagen.trainer import ImagenTrainer

    script = tmp_path / "killed.py"
    script.write_text(KILLED_SAVE)
    root = tmp_path / "ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=240,
                            env=env)
    assert result.returncode == -9, result.stdout[-2000:] + result.stderr[-2000:]
    names = sorted(p.name for p in root.iterdir())
    assert names[0].startswith(".checkpoint.2.partial-") and names[1:] == ["checkpoint.1"], names
    namespace = {}
    exec(COMMON, namespace)  # the same cascade
    trainer = ImagenTrainer(namespace["cascade"](), verbose=False, checkpoint_path=root, checkpoint_layout="folder")
    assert trainer.steps.tolist() == [1, 0]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint.1"]


_ACCELERATE = pytest.mark.skipif(
    shutil.which("accelerate") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")),
    reason="accelerate CLI not installed",
)


@pytest.mark.slow
@_ACCELERATE
def test_two_processes_fsdp2_and_ddp_sharded_saves_resume_bit_for_bit(tmp_path):
    """One `accelerate launch --use_fsdp --fsdp_version 2` of two CPU (gloo) processes, two runs:

    - FSDP2: the trained stage's U-Net and EMA are sharded DTensors (each rank holds half); a
      per-stage folder saved at step 2 (Adam state written by each rank from its shards), loaded by
      fresh trainers and trained to step 4, equals the straight run to step 4 bit for bit (weights,
      EMA, Adam state, generators), on both ranks; loaded again into the now sharded stage and
      trained to step 4 again, it equals it again;
    - then DDP in the same processes (FSDP turned off in the environment): the same, with plain
      replicated parameters (DCP's planner spreads the replicated optimizer state), each rank
      writing its own generators' part;
    - a full disk on rank 1 while it writes its part of a save: both ranks raise (rank 0 naming the
      other process), none hangs, and the folder keeps the previous checkpoint and no partial folder."""
    script = tmp_path / "run.py"
    script.write_text(RUN)
    launcher = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [launcher, "launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("fsdp", "ddp"):
        for rank in range(2):
            report = json.loads((tmp_path / f"report-{name}-{rank}.json").read_text())
            assert report["world"] == 2 and report["start_steps"] == [0, 2] and report["end_steps"] == [0, 4]
            assert report["weights_equal"] and report["ema_equal"] and report["optim_equal"], (name, report)
            assert report["generators_equal"] and report["ranks_equal"] and report["reload_equal"], (name, report)
            sharded = name == "fsdp"
            assert report["sharded"] == report["ema_sharded"] == sharded, (name, report)
            assert 0.4 < report["local_fraction"] < 0.6 if sharded else report["local_fraction"] == 1
        folder = tmp_path / name / "checkpoint.2"
        assert {p.name for p in (folder / "generators").iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
        assert {p.name for p in (folder / "unet.2.optim").iterdir()} >= {"__0_0.distcp", "__1_0.distcp"}
        assert not [p for p in (tmp_path / name).iterdir() if p.name.startswith(".")]  # no partial folder left
        assert [p.name for p in (tmp_path / name / "samples").iterdir()] == ["sample-unet2-5.png"]  # after the reload
        export = load_imagen_from_checkpoint(folder).unets[1].state_dict()  # gathered from the shards under FSDP2
        ema = read_container(folder / "unet.2.safetensors", formats={"imagen-stage": 1}).tensors
        assert export.keys() == {k[4:] for k in ema if k.startswith("ema.")}
        assert all(torch.equal(value, ema["ema." + key]) for key, value in export.items())
    disk = [json.loads((tmp_path / f"report-disk-{rank}.json").read_text()) for rank in range(2)]
    assert "No space left" in disk[1]["raised"] and "another process could not write" in disk[0]["raised"], disk
    assert disk[0]["left"] == ["checkpoint.2", "samples"], disk  # the previous checkpoint, no partial folder
