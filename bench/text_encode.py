"""Benchmark: T5 encoding (float32 vs bfloat16) against TextEmbeddingCache lookups.

Builds a T5 encoder with random weights locally (no hub): by default the shape of
google/t5-v1_1-base (d_model 768, 12 layers, 12 heads, d_ff 2048), which is what matters for speed.

    python bench/text_encode.py --captions 64 --batch-size 16 [--tiny] [--device cpu]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from imagen.text import T5Encoder, TextEmbeddingCache
from imagen.text.testing import DEFAULT_WORDS, build_tiny_t5


def timed(function, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--words", type=int, default=12, help="words per caption")
    parser.add_argument("--tiny", action="store_true", help="the test-sized T5 instead of a base-sized one")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    rng = random.Random(0)
    captions = [" ".join(rng.choice(DEFAULT_WORDS) for _ in range(args.words)) + f" {i}" for i in range(args.captions)]
    shape = {} if args.tiny else {"d_model": 768, "num_layers": 12, "num_heads": 12, "d_kv": 64, "d_ff": 2048}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_t5(Path(tmp) / "t5", **shape)
        print(f"T5 encoder shape {shape or 'tiny'}; {args.captions} captions of ~{args.words + 2} tokens; "
              f"batch {args.batch_size}; device {args.device}; torch threads {torch.get_num_threads()}")
        for dtype in (torch.float32, torch.bfloat16):
            encoder = T5Encoder(folder, batch_size=args.batch_size, device=args.device, dtype=dtype)
            start = time.perf_counter()
            encoder.load()
            load_s = time.perf_counter() - start
            encode_s = timed(lambda encoder=encoder: encoder.encode(captions))
            print(f"  {dtype!s:15s} load {load_s:6.2f} s   encode {encode_s:7.3f} s "
                  f"({args.captions / encode_s:8.1f} captions/s)")
        encoder = T5Encoder(folder, batch_size=args.batch_size, device=args.device)
        start = time.perf_counter()
        cache = TextEmbeddingCache.build(Path(tmp) / "cache", captions, encoder, batch_size=args.batch_size)
        build_s = time.perf_counter() - start
        reopened = TextEmbeddingCache(cache.folder)
        batch = captions[: args.batch_size]
        first_s = timed(lambda: TextEmbeddingCache(cache.folder).lookup(batch), repeat=1)
        lookup_s = timed(lambda: reopened.lookup(batch))
        encode_s = timed(lambda: encoder.encode(batch))
        size = sum(p.stat().st_size for p in cache.folder.iterdir())
        padded = args.captions * 256 * cache.dim * 4
        print(f"  cache build {build_s:.2f} s; {size / 1e6:.2f} MB on disk (padded to 256 tokens it would be "
              f"{padded / 1e6:.2f} MB)")
        print(f"  one batch of {len(batch)}: lookup {lookup_s * 1e3:.2f} ms (first, with SHA-256 check: "
              f"{first_s * 1e3:.2f} ms) vs encode {encode_s * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
