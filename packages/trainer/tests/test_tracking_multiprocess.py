"""Under a two-process ``accelerate launch`` (CPU, gloo) only rank 0 writes tracker files, shows
progress bars and logs, the logged loss is the mean of both ranks' losses, and a time budget stops
both ranks after the same step."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SCRIPT = textwrap.dedent(
    """
    import json, logging, os, sys
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from imagen.cascade import Imagen
    from imagen.trainer import Dataset, ImagenTrainer
    from imagen.unets import Unet

    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO, format=f"LOG rank={rank} %(name)s %(message)s")
    root = Path(sys.argv[1])
    folder = root / f"images-{rank}"  # each rank its own copy: no barrier needed
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    unet = Unet(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=False, layer_cross_attns=False)
    imagen = Imagen(condition_on_text=False, unets=unet, image_sizes=16, timesteps=3)
    trainer = ImagenTrainer(imagen, accelerate_cpu=True, log_with="tensorboard", project_dir=root / "runs",
                            log_every=1, checkpoint_path=root / "ckpt")  # logs "no checkpoint" on every rank
    trainer.add_train_dataset(Dataset(folder, 16), batch_size=4)
    losses = trainer.fit(3, sample_every=3, sample_kwargs={"batch_size": 2, "steps": 2})
    budget = trainer.fit(seconds=1.0)  # a time budget: the ranks must stop together (else DDP hangs)
    (root / f"losses-{rank}.json").write_text(json.dumps({"steps": losses, "budget": len(budget)}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("accelerate") is None
    and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")),
    reason="accelerate CLI not installed",
)
def test_only_rank_zero_writes_events_shows_bars_and_logs(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    launcher = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", "0", str(script), str(tmp_path)],
        capture_output=True, text=True, timeout=240, env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # one writer (the events files' names hold its pid), one bar per fit, rank 0's logs only
    files = list((tmp_path / "runs" / "imagen").glob("events.out.tfevents.*"))  # ...<time>.<host>.<pid>.<n>
    assert files and len({f.name.split(".")[-2] for f in files}) == 1  # one writing process (a file per fit)
    assert len(re.findall(r"unet 1:\s+0%", output)) == 2, output[-4000:]  # the step bar and the budget bar
    assert "LOG rank=0 imagen.trainer" in output and "LOG rank=1 imagen" not in output, output[-4000:]
    log = EventAccumulator(str(tmp_path / "runs" / "imagen"), size_guidance={"scalars": 0, "images": 0})
    log.Reload()
    logged = log.Scalars("train/loss/unet1")[:3]
    assert [e.step for e in logged] == [1, 2, 3]
    reports = [json.loads((tmp_path / f"losses-{r}.json").read_text()) for r in range(2)]
    assert reports[0]["budget"] == reports[1]["budget"] >= 1
    per_rank = np.array([report["steps"] for report in reports])
    assert not np.allclose(per_rank[0], per_rank[1])  # each rank has its own half of the batch
    assert [e.value for e in logged] == pytest.approx(per_rank.mean(axis=0).tolist(), rel=1e-6)
    assert [e.step for e in log.Images("samples/unet1")] == [3]
