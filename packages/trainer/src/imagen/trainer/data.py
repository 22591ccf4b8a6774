"""Image folders as datasets: resizing, flips, captions, precomputed text embeddings, corrupt files.

``Dataset(folder, image_size)`` yields image tensors ``(C, H, W)`` in ``[0, 1]``, flipped left-right
with probability 1/2, as the reference's does. With captions (a sidecar ``<image stem>.txt`` per
image, or a ``metadata.jsonl`` in the folder with one ``{"file_name": ..., "text": ...}`` object per
line) it yields dicts ``{"images", "texts"}``; with a text embedding cache as well (an object with
``lookup(captions) -> (embeds, mask)``, such as ``imagen.text.TextEmbeddingCache``) it yields
``{"images", "text_embeds", "text_masks"}``.

Bad samples never stop a dataset: images that cannot be read, caption files that are not UTF-8 or
are empty, and ``metadata.jsonl`` lines that are not a JSON object with a string ``file_name`` and
a non-empty string ``text`` are skipped, listed in ``Dataset.skipped`` (``(path, reason)``, a
metadata line as ``<path>:<line number>``) and reported in one warning with the count and the first
few files. A folder with nothing usable left raises a ``ValueError`` naming the folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Sampler

__all__ = ["Dataset", "EpochSampler", "collate", "pad_text_embeds", "square_image"]

logger = logging.getLogger(__name__)

_UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
_NAMED_IN_WARNING = 5  # skipped files named in the one construction-time warning


def _mix_seed(*values: int) -> int:
    """A 63-bit seed mixed from integers (splitmix64 steps), stable across processes and runs."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class Dataset(torch.utils.data.Dataset):
    """Images in a folder (searched recursively), resized and centre-cropped to ``image_size``.

    Args:
        folder: the folder holding the images.
        image_size: side of the square output, in pixels.
        exts: file extensions to use (case-insensitive).
        augment_horizontal_flip: flip each image left-right with probability 1/2 (on by default: the
            reference always flips; turn it off when captions speak of left and right).
        convert_image_to: PIL mode every image is converted to (``"RGB"`` by default; None keeps the
            file's own mode). ``convert_image_to_type`` (the reference's name) is an alias.
        captions: ``"auto"``: use captions when the folder has a ``metadata.jsonl`` (images it does
            not list are skipped and counted) or when every image has a sidecar ``.txt``; when only
            some images have a sidecar the captions are ignored with a warning (no image is dropped
            for a stray ``.txt``). True: required (images without one are skipped and counted).
            False: images only.
        text_embedding_cache: an object with ``lookup(captions) -> (embeds (B, L, D), mask (B, L))``;
            when given, items carry ``text_embeds`` ``(L, D)`` and ``text_masks`` ``(L,)`` instead of
            ``texts``.
        verify_images: open every file once at construction and skip the unreadable ones.
        seed: seed of the flips when an item is asked for by a plain index.

    An index may be an ``int`` or an ``(index, augmentation_seed)`` pair; with the pair the flip is a
    pure function of the seed (this is how :class:`EpochSampler` makes data order and augmentation
    reproducible across resumes and worker processes).
    """

    _SAMPLE = "image"  # what a sample is, in messages

    def __init__(
        self,
        folder: str | os.PathLike,
        image_size: int,
        exts: Sequence[str] = ("jpg", "jpeg", "png", "tiff", "webp", "bmp"),
        augment_horizontal_flip: bool = True,
        convert_image_to: str | None = "RGB",
        *,
        convert_image_to_type: str | None = None,
        captions: bool | str = "auto",
        text_embedding_cache=None,
        verify_images: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        if convert_image_to_type is not None:
            convert_image_to = convert_image_to_type
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"folder must be an existing directory, got {str(folder)!r}")
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if captions not in ("auto", True, False):
            raise ValueError(f"captions must be 'auto', True or False, got {captions!r}")
        if text_embedding_cache is not None and not hasattr(text_embedding_cache, "lookup"):
            raise TypeError(
                "text_embedding_cache must have a lookup(captions) -> (embeds, mask) method, "
                f"got {type(text_embedding_cache).__name__}"
            )
        self.image_size = image_size
        self.augment_horizontal_flip = augment_horizontal_flip
        self.convert_image_to = convert_image_to
        self.text_embedding_cache = text_embedding_cache
        self.skipped: list[tuple[str, str]] = []
        """(path, reason) for every image left out: unreadable, or without a required caption."""
        self._generator = torch.Generator().manual_seed(seed)

        wanted = {e.lower().lstrip(".") for e in exts}
        paths = self._sample_paths(wanted)
        table = self._read_metadata_jsonl() if captions is not False else None  # False: never read
        use_captions = captions is True
        if captions == "auto":
            with_sidecar = sum(p.with_suffix(".txt").is_file() for p in paths)
            use_captions = table is not None or (bool(paths) and with_sidecar == len(paths))
            if not use_captions and with_sidecar:
                warnings.warn(
                    f"{folder}: only {with_sidecar} of {len(paths)} images have a caption (.txt); captions are "
                    "ignored and every image is used (pass captions=True to train on the captioned ones only)",
                    stacklevel=2,
                )
        if text_embedding_cache is not None and not use_captions:
            raise ValueError(
                "text_embedding_cache was given but the folder has no captions (captions=False or none found)"
            )
        self.has_captions = use_captions

        self.paths: list[Path] = []
        self.captions: list[str] = []
        for path in paths:
            caption = None
            if use_captions:
                caption, reason = self._caption_for(path, table)
                if caption is None:
                    self._skip(path, reason, warn=False)
                    continue
            if verify_images:
                reason = self._unreadable_reason(path)
                if reason is not None:
                    self._skip(path, reason, warn=False)
                    continue
            self.paths.append(path)
            if caption is not None:
                self.captions.append(caption)
        summary = self._skipped_summary()
        if not self.paths:
            raise ValueError(
                f"folder {str(folder)!r} holds no usable {self._SAMPLE} with extensions {sorted(wanted)}"
                + (f"; {summary}" if summary else "")
            )
        if summary:
            warnings.warn(f"imagen.trainer.{type(self).__name__}({str(folder)!r}): {summary}", stacklevel=2)

    # ---- set-up helpers -------------------------------------------------------------------------
    def _sample_paths(self, exts: set[str]) -> list[Path]:
        """The candidate samples, sorted: the folder's files (recursively) with one of ``exts``."""
        return sorted(p for p in self.folder.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in exts)

    def _read_metadata_jsonl(self) -> dict[str, str] | None:
        """``{file_name: caption}`` from ``metadata.jsonl``; bad lines are skipped and counted."""
        meta = self.folder / "metadata.jsonl"
        if not meta.is_file():
            return None
        try:
            lines = meta.read_bytes().splitlines()
        except OSError as error:
            self._skip(meta, f"unreadable ({type(error).__name__}: {error})", warn=False)
            return {}
        table = {}
        for number, raw in enumerate(lines, start=1):
            entry, reason = _metadata_entry(raw, first=number == 1)
            if reason is not None:
                self._skip(f"{meta}:{number}", reason, warn=False)
            elif entry is not None:
                table[entry[0]] = entry[1]
        return table

    def _caption_for(self, path: Path, table: dict[str, str] | None) -> tuple[str | None, str]:
        """The image's caption, or None and the reason it has none usable."""
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            try:
                caption = sidecar.read_bytes().decode("utf-8-sig").strip()
            except UnicodeDecodeError as error:
                return None, f"caption file {sidecar} is not UTF-8 ({error.reason} at byte {error.start})"
            except OSError as error:
                return None, f"caption file {sidecar} cannot be read ({type(error).__name__}: {error})"
            return (caption, "") if caption else (None, f"caption file {sidecar} is empty")
        if table is not None and str(path.relative_to(self.folder)) in table:
            return table[str(path.relative_to(self.folder))], ""
        return None, "no caption (sidecar .txt or metadata.jsonl entry)"

    @staticmethod
    def _unreadable_reason(path: Path) -> str | None:
        try:
            with Image.open(path) as image:
                image.verify()
        except _UNREADABLE as error:
            return f"unreadable image ({type(error).__name__}: {error})"
        return None

    def _skip(self, path: Path | str, reason: str, *, warn: bool = True) -> None:
        self.skipped.append((str(path), reason))
        logger.warning("skipping %s: %s", path, reason)
        if warn:  # at load time; construction warns once for all (see _skipped_summary)
            warnings.warn(f"imagen.trainer.Dataset skips {path}: {reason}", stacklevel=3)

    def _skipped_summary(self) -> str:
        """``"skipped N bad samples: a.png (reason), ..."`` naming the first few, or ``""``."""
        if not self.skipped:
            return ""
        named = "; ".join(f"{path} ({reason})" for path, reason in self.skipped[:_NAMED_IN_WARNING])
        more = len(self.skipped) - _NAMED_IN_WARNING
        return f"skipped {len(self.skipped)} bad sample(s): {named}" + (f"; and {more} more" if more > 0 else "")

    # ---- items ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, path: Path, flip: bool, aug_seed: int | None) -> torch.Tensor:
        """The sample at ``path`` as floats in [0, 1] (C, H, W); ``aug_seed`` (None for a plain index)
        is for subclasses that draw more than the flip."""
        with Image.open(path) as image:
            image.load()
            return square_image(image, self.image_size, self.convert_image_to, flip).float().div(255.0)

    def __getitem__(self, index):
        if isinstance(index, tuple):
            index, aug_seed = index
            flip = self.augment_horizontal_flip and bool(_mix_seed(aug_seed) & 1)
        else:
            aug_seed = None
            flip = self.augment_horizontal_flip and bool(torch.rand((), generator=self._generator) < 0.5)
        for attempt in range(len(self.paths)):
            i = (index + attempt) % len(self.paths)
            try:
                image = self._load(self.paths[i], flip, aug_seed)
            except _UNREADABLE as error:
                self._skip(self.paths[i], f"unreadable image at load time ({type(error).__name__}: {error})")
                continue
            return self._item(i, image)
        raise RuntimeError(f"no image of {self.folder} could be read")

    def _item(self, i: int, image: torch.Tensor):
        if not self.has_captions:
            return image
        caption = self.captions[i]
        if self.text_embedding_cache is None:
            return {"images": image, "texts": caption}
        embeds, mask = self.text_embedding_cache.lookup([caption])
        return {"images": image, "text_embeds": embeds[0], "text_masks": mask[0].bool()}


def square_image(image: Image.Image, image_size: int, mode: str | None = "RGB", flip: bool = False) -> torch.Tensor:
    """A PIL image as uint8 ``(C, image_size, image_size)``: converted to ``mode`` (None: kept), the
    shorter side resized to ``image_size`` (bilinear), a centre square cropped, flipped left-right
    with ``flip``. The one resize rule of the folder datasets (images and video frames)."""
    if mode is not None and image.mode != mode:
        image = image.convert(mode)
    width, height = image.size
    scale = image_size / min(width, height)
    size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (C, H, W)


def _metadata_entry(raw: bytes, *, first: bool) -> tuple[tuple[str, str] | None, str | None]:
    """One ``metadata.jsonl`` line as ``((file_name, caption), None)``, ``(None, None)`` for a blank
    line, or ``(None, reason)`` for a bad one. The caption is ``text`` (or ``caption``)."""
    try:
        line = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as error:
        return None, f"not UTF-8 ({error.reason} at byte {error.start})"
    if not line.strip():
        return None, None
    try:
        row = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as error:
        return None, f"not valid JSON ({type(error).__name__}: {str(error)[:80]})"
    if not isinstance(row, dict):
        return None, f"not a JSON object (a {type(row).__name__})"
    name = row.get("file_name")
    if not isinstance(name, str) or not name:
        return None, f"'file_name' must be a non-empty string, got {name!r}"[:120]
    text = row["text"] if "text" in row else row.get("caption")
    if not isinstance(text, str):
        return None, f"{name}: 'text' must be a string, got {text!r}"[:120]
    if not text.strip():
        return None, f"{name}: empty 'text'"
    return (str(Path(name)), text), None


def pad_text_embeds(embeds: Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | None = None):
    """Pad per-item text embeddings ``(L_i, D)`` to the longest ``L``; returns ``(B, L, D)`` embeddings
    (zeros in the padding) and a ``(B, L)`` bool mask (True where a token is real)."""
    if not embeds:
        raise ValueError("embeds must hold at least one tensor")
    length = max(e.shape[0] for e in embeds)
    out = embeds[0].new_zeros((len(embeds), length, embeds[0].shape[-1]))
    mask = torch.zeros((len(embeds), length), dtype=torch.bool)
    for b, e in enumerate(embeds):
        out[b, : e.shape[0]] = e
        mask[b, : e.shape[0]] = True if masks is None else masks[b].bool()
    return out, mask


def collate(batch: Sequence):
    """Collate dataset items: tensors are stacked; dict items become a dict with stacked ``images``,
    a list of ``texts`` and padded ``text_embeds`` / ``text_masks`` (see :func:`pad_text_embeds`);
    tuples are collated position by position."""
    first = batch[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(list(batch))
    if isinstance(first, dict):
        out = {}
        for key in first:
            values = [item[key] for item in batch]
            if key == "text_embeds":
                masks = [item["text_masks"] for item in batch] if "text_masks" in first else None
                out["text_embeds"], out["text_masks"] = pad_text_embeds(values, masks)
            elif key == "text_masks":
                continue
            elif isinstance(values[0], torch.Tensor):
                out[key] = torch.stack(values)
            else:
                out[key] = list(values)
        return out
    if isinstance(first, (tuple, list)):
        return type(first)(collate([item[j] for item in batch]) for j in range(len(first)))
    return torch.utils.data.default_collate(list(batch))


class EpochSampler(Sampler):
    """Yields this process's ``(index, augmentation_seed)`` pairs for one epoch, reproducibly.

    Each epoch shuffles ``range(dataset_size)`` with a generator seeded from ``(seed, epoch)``,
    wraps the permutation around to a whole number of global batches of ``global_batch_size``, and
    gives process ``rank`` its contiguous share of ``global_batch_size // num_replicas`` items of
    every global batch. ``start_batch`` skips the first batches of the epoch (a resume).
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        start_batch: int = 0,
    ):
        if global_batch_size % num_replicas:
            raise ValueError(
                f"batch_size ({global_batch_size}) must be divisible by the number of processes ({num_replicas})"
            )
        if dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
        self.dataset_size, self.global_batch_size = dataset_size, global_batch_size
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        """Number of global batches in one epoch."""
        return math.ceil(self.dataset_size / self.global_batch_size)

    @property
    def local_batch_size(self) -> int:
        """Items this process gets from every global batch."""
        return self.global_batch_size // self.num_replicas

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.local_batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.dataset_size, generator=g).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.batches_per_epoch * self.global_batch_size
        order = (order * math.ceil(total / len(order)))[:total]
        local = self.local_batch_size
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * self.global_batch_size + self.rank * local
            for position in range(start, start + local):
                yield order[position], _mix_seed(self.seed, self.epoch, position)
