"""Loader benchmark: ``python bench/loader.py [--output bench/loader.md] [--images 256] [--rounds 3]``.

1. Start-up: time from nothing (a fresh process) to the first batch, that process's peak RSS and
   the peak RSS of a loader worker (two workers to their first batch, read after they exit),
   for a shard index of 10k, 1M and 10M entries (samples) - the index lists shards of 1,000
   samples each, all links to one real shard, so only the list grows - next to the folder
   ``Dataset`` with 1k and 10k real files (it lists and verifies every one).
2. Decoding: images/s of one process (what one loader worker does) at 64 and 256 px, from shards
   (``ShardStream``, uint8) and from the folder ``Dataset`` (float), for the same JPEG images
   (512 x 384, smooth synthetic pictures with a caption each).

Every figure is the median of ``--rounds`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

STARTUP = r"""
import json, resource, sys, time
start = time.perf_counter()
kind, source = sys.argv[1], sys.argv[2]
import imagen.trainer, imagen.trainer.shards
from torch.utils.data import DataLoader
imported = time.perf_counter()
if kind == "shards":
    from imagen.trainer.shards import ShardDataset, ShardStream
    dataset = ShardDataset(source, 64)
    batch = next(ShardStream(dataset, 16, world=1, rank=0, seed=0))
else:
    from imagen.trainer import Dataset
    from imagen.trainer.data import collate
    batch = next(iter(DataLoader(Dataset(source, 64), batch_size=16, collate_fn=collate)))
end = time.perf_counter()
figures = {"seconds": end - start, "after_imports": end - imported,
           "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "worker_rss_mib": float("nan")}
if kind == "shards":  # two loader workers to their first batch, then shut down: their peak RSS
    stream = ShardStream(dataset, 16, world=1, rank=0, seed=0, num_workers=2)
    next(stream)
    del stream
    import gc; gc.collect()
    figures["worker_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps(figures))
"""

def picture(rng, width=512, height=384) -> Image.Image:
    """A smooth synthetic photo-like image (gradients and discs), which JPEG compresses as it does photos."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, 3)
        channels.append(128 + 60 * np.sin(a * x / 40 + b * y / 50 + c * 6))
    image = np.stack(channels, -1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 90)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_folder(folder: Path, count: int, size=None, seed=0, fmt="JPEG") -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = picture(rng) if size is None else Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8))
        suffix = "jpg" if fmt == "JPEG" else "png"
        image.save(folder / f"{i:07d}.{suffix}", fmt, quality=90) if fmt == "JPEG" else image.save(
            folder / f"{i:07d}.{suffix}")
        (folder / f"{i:07d}.txt").write_text(f"picture number {i}")
    return folder


def synthetic_index(root: Path, real_index: Path, entries: int) -> Path:
    """An index of ``entries`` samples: shards of 1,000, every one a link to the one real shard."""
    real = json.loads(real_index.read_text())
    shard = real_index.parent / real["shards"][0]["url"]
    samples = real["shards"][0]["samples"]
    folder = root / f"index-{entries}"
    folder.mkdir()
    shards = []
    for i in range(entries // samples):
        link = folder / f"shard-{i:07d}.tar"
        link.symlink_to(shard)
        shards.append({"url": link.name, "samples": samples})
    index = {**real, "shards": shards}
    (folder / "shards.json").write_text(json.dumps(index))
    return folder / "shards.json"


def run_startup(kind: str, source: Path, rounds: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    runs = []
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", STARTUP, kind, str(source)], capture_output=True, text=True,
                             env=env, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}  # nan (folder rows) stays nan


def decode_rates(shard_index: Path, folder: Path, count: int, size: int, rounds: int) -> dict:
    from imagen.trainer import Dataset
    from imagen.trainer.shards import ShardDataset, ShardStream

    shards, batch = ShardDataset(shard_index, size, text_embeds=False), 16
    rates = {"shards": [], "folder": []}
    for _ in range(rounds):
        stream = ShardStream(shards, batch, world=1, rank=0, seed=0)
        start = time.perf_counter()
        for _ in range(count // batch):
            next(stream)
        rates["shards"].append(count // batch * batch / (time.perf_counter() - start))
        dataset = Dataset(folder, size, verify_images=False)
        start = time.perf_counter()
        for i in range(count):
            dataset[i]
        rates["folder"].append(count / (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--images", type=int, default=256, help="JPEGs for the decoding rates")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from imagen.trainer import write_shards

    lines = ["# Loader benchmark (bench/loader.py)", "",
             f"`python bench/loader.py --images {args.images} --rounds {args.rounds}`; 2-core CPU shared with other "
             f"jobs, one thread per process, median of {args.rounds}.", ""]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small = make_folder(root / "small", 1000, size=64, fmt="PNG")
        small_index = write_shards(small, root / "small-shards", samples_per_shard=1000)
        lines += ["## Start-up to the first batch (a fresh process: imports, index, first batch of 16 at 64 px)", "",
                  "| source | entries | shards | s to first batch | s after imports | peak RSS (MiB) | worker (MiB) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for entries in (10_000, 1_000_000, 10_000_000):
            figures = run_startup("shards", synthetic_index(root, small_index, entries), args.rounds)
            lines.append(f"| shard index | {entries:,} | {entries // 1000:,} | {figures['seconds']:.2f} | "
                         f"{figures['after_imports']:.2f} | {figures['rss_mib']:.0f} | "
                         f"{figures['worker_rss_mib']:.0f} |")
        big = make_folder(root / "big", 10_000, size=64, fmt="PNG")
        for folder, entries in ((small, 1000), (big, 10_000)):
            figures = run_startup("folder", folder, args.rounds)
            lines.append(f"| folder Dataset | {entries:,} | - | {figures['seconds']:.2f} | "
                         f"{figures['after_imports']:.2f} | {figures['rss_mib']:.0f} | - |")
        jpegs = make_folder(root / "jpegs", args.images)
        jpeg_index = write_shards(jpegs, root / "jpeg-shards", samples_per_shard=64)
        lines += ["", f"## Decoding: images/s of one process ({args.images} JPEGs of 512 x 384)", "",
                  "| decoded at | shards (uint8, draft decode) | folder Dataset (float) |", "| ---: | ---: | ---: |"]
        for size in (64, 256):
            rates = decode_rates(jpeg_index, jpegs, args.images, size, args.rounds)
            lines.append(f"| {size} px | {rates['shards']:.0f} | {rates['folder']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
