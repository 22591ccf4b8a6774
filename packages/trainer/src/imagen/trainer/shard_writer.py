"""Writing webdataset shards from a folder or from images and captions (with webdataset's
``ShardWriter``), and their ``shards.json`` index."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as save_safetensors
from webdataset import ShardWriter

from imagen.cascade import fsync_folder

from .data import Dataset
from .shard_index import INDEX_NAME, write_index
from .shard_reading import IMAGE_EXTS

__all__ = ["write_shards"]


def _image_bytes(image) -> tuple[bytes, str]:
    """``(encoded bytes, extension)`` of an image given as a path, bytes, PIL image, uint8 array
    ``(H, W, C)`` or tensor ``(C, H, W)`` (uint8, or float in [0, 1])."""
    if isinstance(image, (str, os.PathLike)):
        ext = Path(image).suffix.lower().lstrip(".")
        ext = "jpg" if ext == "jpeg" else ext
        if ext in IMAGE_EXTS:
            return Path(image).read_bytes(), ext
        with Image.open(image) as opened:
            return _image_bytes(opened.convert("RGB"))
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as opened:
            ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}.get(opened.format)
            if ext is None:
                return _image_bytes(opened.convert("RGB"))
        return bytes(image), ext
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        array = (array.clamp(0, 1) * 255).round().to(torch.uint8) if array.is_floating_point() else array
        image = array.permute(1, 2, 0).squeeze(-1).numpy() if array.ndim == 3 else array.numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"an image array must be uint8 (H, W[, C]), got {image.dtype}")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    raise TypeError(
        f"an image must be a path, bytes, a PIL image, a uint8 array or a tensor, got {type(image).__name__}"
    )


def _embedding_bytes(embeds, dtype: torch.dtype) -> bytes:
    embeds = torch.as_tensor(embeds)
    if embeds.ndim != 2:
        raise ValueError(f"a text embedding must be (L, D), got shape {tuple(embeds.shape)}")
    return save_safetensors({"text_embeds": embeds.detach().to("cpu", dtype).contiguous()})


def _folder_pairs(folder: Path, captions, text_embedding_cache, batch: int = 64) -> Iterator[tuple]:
    """``(path, caption or None, embedding or None)`` of a folder's usable images, as
    ``imagen.trainer.Dataset`` finds them (its caption rules and bad-file skips)."""
    listing = Dataset(folder, 1, captions=captions)
    texts = listing.captions if listing.has_captions else [None] * len(listing.paths)
    for begin in range(0, len(listing.paths), batch):
        paths, caps = listing.paths[begin:begin + batch], texts[begin:begin + batch]
        embeds = [None] * len(paths)
        if text_embedding_cache is not None:
            if not listing.has_captions:
                raise ValueError("text_embedding_cache was given but the folder has no captions")
            values, masks = text_embedding_cache.lookup(list(caps))
            embeds = [v[: int(m.sum())] for v, m in zip(values, masks)]  # trimmed to the caption's tokens
        yield from zip(paths, caps, embeds)


def _as_triple(item) -> tuple:
    if isinstance(item, dict):
        return item.get("image"), item.get("text", item.get("caption")), item.get("text_embeds")
    if isinstance(item, (tuple, list)) and len(item) in (1, 2, 3):
        return tuple(item) + (None,) * (3 - len(item))
    return item, None, None


def write_shards(
    source,
    out: str | os.PathLike,
    samples_per_shard: int = 1000,
    *,
    prefix: str = "shard",
    captions: bool | str = "auto",
    text_embedding_cache=None,
    embed_dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: float = 3e9,
) -> Path:
    """Writes webdataset tar shards ``<out>/<prefix>-000000.tar, ...`` and their index
    ``<out>/shards.json``; returns the index's path (what :class:`ShardDataset` takes).

    ``source`` is a folder (its images and captions found as ``imagen.trainer.Dataset`` finds them,
    with ``captions``; with ``text_embedding_cache`` each caption's embedding is stored too) or an
    iterable of images, ``(image, caption)`` / ``(image, caption, text_embeds (L, D))`` tuples or
    ``{"image", "text", "text_embeds"}`` dicts; an image is a path, bytes, a PIL image, a uint8
    array or a tensor. Files keep their encoding; other images are stored as PNG. Embeddings are
    stored as ``embed_dtype`` in ``<key>.safetensors``. Each shard is written under a partial name
    and renamed when complete; the index is written last, atomically.
    """
    if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int) or samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be an int >= 1, got {samples_per_shard!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(source, (str, os.PathLike)):
        items: Iterable = _folder_pairs(Path(source), captions, text_embedding_cache)
    elif isinstance(source, Iterable):
        items = (_as_triple(item) for item in source)
    else:
        raise TypeError(f"source must be a folder or an iterable of images / pairs, got {type(source).__name__}")
    written: list[str] = []
    counts: list[int] = []
    dims: set[int] = set()

    def finished(partial: str) -> None:
        final = partial[: -len(".partial")]
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, final)
        fsync_folder(out)  # the rename itself reaches the disk
        written.append(Path(final).name)

    pattern = str(out / f"{prefix}-%06d.tar.partial")
    total = 0
    with ShardWriter(pattern, maxcount=samples_per_shard, maxsize=max_shard_bytes, post=finished, verbose=0) as sink:
        for image, caption, embeds in items:
            data, ext = _image_bytes(image)
            sample = {"__key__": f"{total:09d}", ext: data}
            if caption is not None:
                sample["txt"] = str(caption).encode("utf-8")
            if embeds is not None:
                sample["safetensors"] = _embedding_bytes(embeds, embed_dtype)
                dims.add(int(torch.as_tensor(embeds).shape[-1]))
            sink.write(sample)
            total += 1
            if sink.count == 1:
                counts.append(0)
            counts[-1] += 1
    if total == 0:
        for name in written:
            (out / name).unlink(missing_ok=True)
        raise ValueError(f"source {source!r} holds no sample to write")
    if len(dims) > 1:
        raise ValueError(f"the text embeddings have different widths {sorted(dims)}")
    write_index(out / INDEX_NAME, [{"url": n, "samples": c} for n, c in zip(written, counts)],
                 dims.pop() if dims else None)
    return out / INDEX_NAME
