"""How long each process spends in ``ImagenTrainer.save``: one file vs a per-stage folder, DDP vs FSDP2.

Run under accelerate with two CPU processes (gloo), e.g.::

    CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 \\
        bench/checkpoint_save.py --dim 48 --out /tmp/ckpt-bench
    CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1 accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 \\
        bench/checkpoint_save.py --dim 48 --out /tmp/ckpt-bench --layouts folder

Each rank prints its wall time inside ``save`` (the median of ``--repeats``) and the bytes it wrote
itself; the main process prints a markdown table. Timing belongs here, never in a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", default="file,folder")
    parser.add_argument("--out", default="/tmp/ckpt-bench")
    args = parser.parse_args()

    from accelerate.utils import gather_object

    from imagen.cascade import Imagen
    from imagen.trainer import ImagenTrainer
    from imagen.trainer.fsdp import fsdp_version
    from imagen.unets import Unet

    torch.manual_seed(0)
    unet = Unet(dim=args.dim, dim_mults=(1, 2, 4), num_resnet_blocks=2, layer_attns=False, layer_cross_attns=False)
    imagen = Imagen(condition_on_text=False, unets=unet, image_sizes=16, timesteps=10)
    layouts = args.layouts.split(",")
    trainer = ImagenTrainer(imagen, verbose=False, accelerate_cpu=True, checkpoint_layout=layouts[-1])
    trainer(torch.rand(2, 3, 16, 16), unet_number=1)  # one step: Adam state exists
    trainer.update(1)
    accelerator = trainer.accelerator
    mode = "FSDP2" if fsdp_version(accelerator) else "DDP"
    params = sum(p.numel() for p in unet.parameters())
    rows = []
    for layout in layouts:
        seconds = []
        for repeat in range(args.repeats):
            path = Path(args.out) / f"{layout}-{repeat}"
            if accelerator.is_main_process and path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            accelerator.wait_for_everyone()
            began = time.perf_counter()
            trainer.save(path, layout=layout)
            seconds.append(time.perf_counter() - began)
        report = {"rank": accelerator.process_index, "layout": layout, "seconds": statistics.median(seconds)}
        rows += gather_object([report])
    if accelerator.is_main_process:
        print(f"\n{mode}, {accelerator.num_processes} processes, U-Net of {params / 1e6:.1f} M parameters "
              f"(dim={args.dim}), median of {args.repeats} saves\n")
        print("| layout | rank | seconds in save |\n| --- | --- | --- |")
        for row in rows:
            print(f"| {row['layout']} | {row['rank']} | {row['seconds']:.3f} |")
        print(json.dumps(rows))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(args.out, ignore_errors=True)
    os.environ.pop("ACCELERATE_USE_FSDP", None)


if __name__ == "__main__":
    main()
