"""Shard lists: brace patterns, globs and the ``shards.json`` index of each shard's sample count."""

from __future__ import annotations

import glob
import json
import os
import tarfile
from pathlib import Path

import fsspec
from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext

from imagen.cascade import atomic_write

__all__ = ["INDEX_NAME", "count_samples", "expand_shards", "index_shards", "read_index", "write_index"]

INDEX_NAME = "shards.json"
INDEX_FORMAT = "imagen-shards"


def expand_shards(source) -> list[str]:
    """Shard URLs from a brace pattern / glob (a string) or a list of them."""
    patterns = [str(source)] if isinstance(source, (str, os.PathLike)) else [str(s) for s in source]
    urls = []
    for pattern in patterns:
        for expanded in braceexpand(pattern):
            if "://" not in expanded and glob.has_magic(expanded):
                urls.extend(sorted(glob.glob(expanded)))
            else:
                urls.append(expanded)
    return urls


def count_samples(url: str) -> int:
    """The number of samples (member keys) in one shard, from its tar headers only."""
    keys, last = 0, None
    with fsspec.open(url, "rb") as handle, tarfile.open(fileobj=handle, mode="r:*") as tar:
        for member in tar:
            key, _ = base_plus_ext(member.name)
            if member.isreg() and key is not None and not Path(member.name).name.startswith("__"):
                keys, last = keys + (key != last), key
    return keys


def index_shards(source, out: str | os.PathLike | None = None, *, text_embed_dim: int | None = None) -> Path:
    """Writes the index ``shards.json`` (each shard's URL and sample count) for shards that have
    none (e.g. written by img2dataset), reading their tar headers once. ``out`` defaults to the
    first shard's folder; URLs are stored relative to it where they lie below it."""
    urls = expand_shards(source)
    if not urls:
        raise ValueError(f"no shard matches {source!r}")
    out = Path(out) if out is not None else Path(urls[0]).parent / INDEX_NAME
    if out.is_dir():
        out = out / INDEX_NAME
    entries = [{"url": _relative(url, out.parent), "samples": count_samples(url)} for url in urls]
    write_index(out, entries, text_embed_dim)
    return out


def _relative(url: str, folder: Path) -> str:
    if "://" in url:
        return url
    try:
        return Path(url).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(Path(url).resolve())


def write_index(path: Path, entries: list[dict], text_embed_dim: int | None) -> None:
    index = {"format": INDEX_FORMAT, "format_version": 1, "text_embed_dim": text_embed_dim, "shards": entries}
    atomic_write(path, json.dumps(index).encode("utf-8"))


def read_index(path: Path) -> tuple[list[str], list[int], int | None]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format") != INDEX_FORMAT:
            raise ValueError(f"format is {index.get('format')!r}, not {INDEX_FORMAT!r}")
        folder = str(path.parent)
        urls = [e["url"] if "://" in e["url"] else os.path.join(folder, e["url"]) for e in index["shards"]]
        counts = [int(e["samples"]) for e in index["shards"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # JSON and UTF-8 errors included
        raise ValueError(f"{path} is not a readable shard index ({type(error).__name__}: {error})") from None
    return urls, counts, index.get("text_embed_dim")
