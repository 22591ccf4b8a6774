"""HF datasets loader benchmark: ``python bench/hf_loader.py [--output bench/hf_loader.md] [--rounds 3]``.

1. Start-up of :class:`imagen.trainer.HFDataset`: time from nothing (a fresh process) to the first
   batch of 16 at 64 px, that process's peak RSS and a loader worker's (two workers to their first
   batch), for a table of 10k and 1M rows: a ``save_to_disk`` folder of 10k rows (one small JPEG
   each), memory-mapped, and for 1M that table concatenated 100 times (``concatenate_datasets``
   keeps the memory maps: a 1M-row table without 1M images on disk).
2. Decoding: images/s of one process (what one loader worker does) at 64 and 256 px from an
   ``Image`` column holding the JPEGs of ``bench/loader.py`` (512 x 384), next to the same images
   in webdataset shards (``ShardDataset``).

Every figure is the median of ``--rounds`` runs. Needs ``imagen-trainer[hf]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import make_folder, picture

STARTUP = r"""
import json, resource, sys, time
start = time.perf_counter()
folder, copies = sys.argv[1], int(sys.argv[2])
import datasets
from imagen.trainer import HFDataset
from imagen.trainer.shards import ShardStream
imported = time.perf_counter()
table = datasets.load_from_disk(folder)
if copies > 1:
    table = datasets.concatenate_datasets([table] * copies)
opened = time.perf_counter()
dataset = HFDataset(table, 64)
batch = next(ShardStream(dataset, 16, world=1, rank=0, seed=0))
end = time.perf_counter()
figures = {"rows": len(dataset), "seconds": end - start, "after_imports": end - imported, "ours": end - opened,
           "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
stream = ShardStream(dataset, 16, world=1, rank=0, seed=0, num_workers=2)
next(stream)
del stream
import gc; gc.collect()
figures["worker_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps(figures))
"""


def jpeg_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def small_table(folder: Path, rows: int) -> Path:
    """``rows`` rows of one 64 x 48 JPEG and a caption each, saved with ``save_to_disk``."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    data = jpeg_bytes(Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)))
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    table = datasets.Dataset.from_dict({"image": [{"bytes": data, "path": None}] * rows,
                                        "caption": [f"picture number {i}" for i in range(rows)]}, features=features)
    table.save_to_disk(str(folder))
    return folder


def run_startup(folder: Path, copies: int, rounds: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    runs = []
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", STARTUP, str(folder), str(copies)], capture_output=True,
                             text=True, env=env, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def decode_rates(root: Path, count: int, size: int, rounds: int) -> dict:
    import datasets

    from imagen.trainer import HFDataset, write_shards
    from imagen.trainer.shards import ShardDataset, ShardStream

    folder = root / "jpegs"
    if not folder.is_dir():
        make_folder(folder, count)
    images = sorted(folder.glob("*.jpg"))
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": p.read_bytes(), "path": None} for p in images],
         "caption": [p.with_suffix(".txt").read_text() for p in images]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}))
    index = root / "shards" / "shards.json"
    if not index.is_file():
        index = write_shards(folder, root / "shards", samples_per_shard=1000)
    sources = {"hf": HFDataset(table, size), "shards": ShardDataset(index, size, text_embeds=False)}
    batch, rates = 16, {name: [] for name in sources}
    for _ in range(rounds):
        for name, dataset in sources.items():
            stream = ShardStream(dataset, batch, world=1, rank=0, seed=0)
            start = time.perf_counter()
            for _ in range(count // batch):
                next(stream)
            rates[name].append(count // batch * batch / (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--images", type=int, default=256, help="JPEGs for the decoding rates")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    assert picture  # the JPEGs are bench/loader.py's pictures (make_folder draws them)
    load_start = " ".join(f"{v:.1f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="hf-loader-") as tmp:
        root = Path(tmp)
        table = small_table(root / "table", 10_000)
        startup = {rows: run_startup(table, rows // 10_000, args.rounds) for rows in (10_000, 1_000_000)}
        decoding = {size: decode_rates(root, args.images, size, args.rounds) for size in (64, 256)}
    load = f"{load_start} at the start, " + " ".join(f"{v:.1f}" for v in os.getloadavg()) + " at the end"
    lines = [
        "# HF datasets loader benchmark (bench/hf_loader.py)",
        "",
        f"`python bench/hf_loader.py --images {args.images} --rounds {args.rounds}`; 2-core CPU shared with "
        f"other jobs (load {load}), one thread per process, median of {args.rounds}.",
        "",
        "## Start-up to the first batch (a fresh process: imports, table, first batch of 16 at 64 px)",
        "",
        "| rows | s to first batch | s after imports | of which HFDataset to first batch | peak RSS (MiB) "
        "| worker (MiB) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rows, f in startup.items():
        lines.append(f"| {rows:,} | {f['seconds']:.2f} | {f['after_imports']:.2f} | {f['ours']:.2f} | "
                     f"{f['rss_mib']:.0f} | {f['worker_rss_mib']:.0f} |")
    lines += ["", f"## Decoding: images/s of one process ({args.images} JPEGs of 512 x 384)", "",
              "| decoded at | HFDataset (Image column) | ShardDataset (shards) |", "| ---: | ---: | ---: |"]
    for size, r in decoding.items():
        lines.append(f"| {size} px | {r['hf']:.0f} | {r['shards']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
