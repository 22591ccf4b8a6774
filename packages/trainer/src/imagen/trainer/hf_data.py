"""Training data from Hugging Face ``datasets``: a local Arrow/parquet folder, a folder written by
``save_to_disk``, a dataset name resolved through the ``datasets`` cache (offline-first), or a
``datasets.Dataset`` already loaded; streamed by process and loader worker like the shards.

:class:`HFDataset` is a :class:`~imagen.trainer.ShardDataset` whose "shards" are blocks of
``block_rows`` consecutive rows: the order, the split by process and worker, the shuffle window,
the resume from a saved position and the counting of bad samples are the shard stream's
(:mod:`imagen.trainer.shard_order`, :mod:`imagen.trainer.shard_reading`); only reading a block and
decoding a row are its own. Rows are read as Arrow (no decoding by ``datasets``) and each image is
decoded here at the trained stage's size, kept uint8.

``datasets`` is an optional dependency: ``pip install imagen-trainer[hf]``.
"""

from __future__ import annotations

import copy
import glob
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .shard_reading import decode_image
from .shards import ShardDataset

__all__ = ["DatasetNotFoundError", "HFDataset", "datasets_cache", "load_hf_dataset"]

logger = logging.getLogger(__name__)

HUB_NAME = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
CAPTION_COLUMNS = ("caption", "text", "txt", "prompt", "captions")
DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
_TRUE = {"1", "true", "yes", "on"}


class DatasetNotFoundError(FileNotFoundError, ValueError):
    """A dataset that is neither here nor in the cache, and cannot be downloaded."""


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ImportError("Hugging Face datasets sources need the datasets package: "
                          "pip install imagen-trainer[hf]") from None
    return datasets


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` (read now) forbids the hub."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def datasets_cache() -> Path:
    """The ``datasets`` cache folder, resolved from the environment now: ``HF_DATASETS_CACHE``,
    else ``HF_HOME/datasets``, else ``~/.cache/huggingface/datasets``."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.environ["HF_DATASETS_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "datasets"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "huggingface" / "datasets"


def _pick_split(loaded, split: str | None, where: str):
    """One ``datasets.Dataset`` of a ``DatasetDict``: ``split``, or (None) the reference CLI's
    choice: ``train`` and ``valid`` concatenated, else ``train``, else ``valid``, else the only one."""
    datasets = _datasets()
    if isinstance(loaded, datasets.Dataset):
        if split is not None and loaded.split is not None and str(loaded.split) != split:
            raise ValueError(f"split={split!r}: {where} holds the split {str(loaded.split)!r} only")
        return loaded
    if not isinstance(loaded, datasets.DatasetDict):
        raise TypeError(f"{where} is a {type(loaded).__name__}, not a datasets.Dataset or DatasetDict "
                        "(iterable datasets stream in no fixed order and are not supported)")
    names = sorted(loaded)
    if split is not None:
        if split not in loaded:
            raise ValueError(f"split={split!r}: {where} has the splits {names}")
        return loaded[split]
    if "train" in loaded and "valid" in loaded:
        return datasets.concatenate_datasets([loaded["train"], loaded["valid"]])
    for name in ("train", "valid"):
        if name in loaded:
            return loaded[name]
    if len(names) == 1:
        return loaded[names[0]]
    raise ValueError(f"{where} has the splits {names} and none is 'train' or 'valid': give split=")


def _cached_folders(name: str, cache: Path) -> list[str]:
    """The prepared copies of hub dataset ``name`` in a ``datasets`` cache (``namespace___name/
    config/version/hash`` folders, the layout ``load_dataset`` writes)."""
    from datasets.naming import camelcase_to_snakecase

    parts = name.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    return [p for p in glob.glob(str(cache / "___".join(parts) / "*" / "*" / "*")) if os.path.isdir(p)]


def _from_cache(name: str, cache: Path, config_name: str | None, split: str | None):
    """Hub dataset ``name`` from the ``datasets`` cache, with no network access (what
    ``load_dataset`` does itself in offline mode: its ``cache`` builder, latest copy first)."""
    from datasets.packaged_modules.cache.cache import Cache

    try:
        builder = Cache(cache_dir=str(cache), dataset_name=name.split("/")[-1], repo_id=name,
                        config_name=config_name, version="auto", hash="auto")
    except ValueError as error:  # several configs cached, or not this one: datasets names them
        raise ValueError(f"dataset {name!r} in the datasets cache {cache}: {error}") from None
    return _pick_split(builder.as_dataset(), split, f"dataset {name!r} (cached)")


def load_hf_dataset(source, *, split: str | None = None, config_name: str | None = None,
                    cache_dir: str | os.PathLike | None = None):
    """``(dataset, label)``: one ``datasets.Dataset`` and a name for messages.

    ``source`` is a ``datasets.Dataset`` / ``DatasetDict``, a folder written by ``save_to_disk``,
    a local folder of data files (parquet, arrow, ...) or one such file, or a hub dataset name. A
    name is looked up first in the ``datasets`` cache (``cache_dir``, default
    :func:`datasets_cache`) and used from there without any network access; it is downloaded only
    when it is not cached, neither ``HF_HUB_OFFLINE`` nor ``HF_DATASETS_OFFLINE`` is set and the
    hub answers a quick probe. A name neither cached nor downloadable raises
    :class:`DatasetNotFoundError` (a ``FileNotFoundError`` and a ``ValueError``) at once, saying
    how to provide it."""
    datasets = _datasets()
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return _pick_split(source, split, "the dataset given"), "the dataset given"
    if isinstance(source, datasets.IterableDataset | datasets.IterableDatasetDict):
        raise TypeError("an IterableDataset streams in no fixed order, so its split by process cannot be "
                        "resumed: load it as a Dataset (or convert it to shards)")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be a datasets.Dataset, a path or a dataset name, got {type(source).__name__}")
    text = os.fspath(source)
    path = Path(text).expanduser()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else datasets_cache()
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return _pick_split(datasets.load_from_disk(str(path)), split, f"folder {text!r}"), text
    if path.is_dir():
        # absolute: a relative folder named like a builder (``parquet``) would load that builder on the cwd
        loaded = datasets.load_dataset(str(path.resolve()), config_name, cache_dir=str(cache))
        return _pick_split(loaded, split, f"folder {text!r}"), text
    if path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"data file {text!r}: accepted files are {sorted(DATA_FILE_BUILDERS)} (or give a folder)")
        loaded = datasets.load_dataset(builder, data_files=str(path.resolve()), cache_dir=str(cache))
        return _pick_split(loaded, split, f"data file {text!r}"), text
    if not HUB_NAME.fullmatch(text) or text.startswith((".", "~")):
        raise DatasetNotFoundError(f"dataset {text!r} is not an existing file or folder, nor a dataset name")
    if _cached_folders(text, cache):
        logger.info("dataset %s: using its copy in the datasets cache %s", text, cache)
        return _from_cache(text, cache, config_name, split), text
    if hub_offline():
        raise DatasetNotFoundError(
            f"dataset {text!r} is not a local folder and not in the datasets cache {cache}, and "
            "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set. Provide it: load_dataset it on a machine with "
            "internet and copy its cache folder here (point HF_DATASETS_CACHE or HF_HOME at it), or "
            "save_to_disk / to_parquet it into a folder and give that folder's path"
        )
    from imagen.text import hub_reachable

    if not hub_reachable():  # a quick probe: datasets would retry for half a minute
        raise DatasetNotFoundError(f"dataset {text!r} is not a local folder and not in the datasets cache {cache}, "
                                   "and the hub cannot be reached (HF_ENDPOINT); copy a cache prepared elsewhere "
                                   "(HF_DATASETS_CACHE) or give a local folder")
    logger.info("dataset %s is not cached in %s: downloading it", text, cache)
    try:
        loaded = datasets.load_dataset(text, config_name, cache_dir=str(cache))
    except (ConnectionError, OSError) as error:
        raise DatasetNotFoundError(f"dataset {text!r} is not in the datasets cache {cache} and cannot be "
                                   f"downloaded ({type(error).__name__}: {error})") from None
    return _pick_split(loaded, split, f"dataset {text!r}"), text


def _column(features, wanted: str | None, known: tuple[str, ...], role: str, is_image: bool) -> str:
    names = list(features)
    if wanted is not None:
        if wanted not in features:
            raise ValueError(f"{role}_column={wanted!r} is not a column; the columns are {names}")
        return wanted
    if is_image:
        typed = [n for n in names if type(features[n]).__name__ == "Image"]
        if len(typed) == 1:
            return typed[0]
    found = [n for n in known if n in features]
    if not found:
        raise ValueError(f"no {role} column among {names}: give {role}_column= (looked for {list(known)})")
    return found[0]


class _BlockSizes(Sequence):
    """The row count of every block (``block_rows``, the last one the rest), computed when asked:
    the shard stream's ``counts``, with no list to hold (or pickle to each worker) at scale."""

    def __init__(self, block_rows: int, total: int):
        self.block_rows, self.total = block_rows, total
        self.blocks = math.ceil(total / block_rows)

    def __len__(self) -> int:
        return self.blocks

    def _index(self, block: int) -> int:
        index = block + self.blocks if block < 0 else block
        if not 0 <= index < self.blocks:
            raise IndexError(block)
        return index

    def __getitem__(self, block):
        if isinstance(block, slice):
            return [self[b] for b in range(*block.indices(self.blocks))]
        index = self._index(block)
        return self.block_rows if index < self.blocks - 1 else self.total - index * self.block_rows


class _BlockNames(_BlockSizes):
    """``"<label> rows a-b"`` of every block (the shard stream's ``urls``), made when asked."""

    def __init__(self, label: str, block_rows: int, total: int):
        super().__init__(block_rows, total)
        self.label = label

    def __getitem__(self, block):
        if isinstance(block, slice):
            return [self[b] for b in range(*block.indices(self.blocks))]
        first = self._index(block) * self.block_rows
        return f"{self.label} rows {first}-{min(first + self.block_rows, self.total) - 1}"


def _row_embedding(cells) -> torch.Tensor:
    """One row's embedding ``(L, D)`` as float32 from its Arrow list of ``L`` lists of ``D`` numbers;
    raises ValueError when it is missing, empty, ragged or not numbers."""
    if cells is None:
        raise ValueError("no text embedding")
    lengths = cells.value_lengths().to_numpy(zero_copy_only=False) if hasattr(cells, "value_lengths") else None
    if lengths is None or len(lengths) == 0 or (lengths != lengths[0]).any() or lengths[0] == 0:
        raise ValueError(f"the text embedding must be (L, D) with L, D >= 1, got {cells.type} of {len(cells)} rows")
    values = cells.flatten().to_numpy(zero_copy_only=False)
    if values.dtype.kind != "f":
        raise ValueError(f"the text embedding holds {values.dtype}, not floats")
    return torch.from_numpy(values.astype(np.float32).reshape(len(lengths), int(lengths[0])))


class HFDataset(ShardDataset):
    """Images and captions from a Hugging Face ``datasets`` table, for
    ``ImagenTrainer.add_train_dataset`` (streamed in batches split by process and loader worker,
    resumable exactly, as a :class:`ShardDataset`).

    Args:
        source: a ``datasets.Dataset`` / ``DatasetDict``, a ``save_to_disk`` folder, a folder of
            parquet/arrow files (or one file), or a dataset name from the ``datasets`` cache
            (offline-first: see :func:`load_hf_dataset`).
        image_size: side of the decoded square images (the trained stage's size).
        split: the split to read (None: ``train`` + ``valid``, else ``train``, else ``valid``,
            else the only one, as the reference CLI).
        image_column: the column with the images (an ``Image`` feature, encoded bytes, or file
            paths); None: the only ``Image`` column, else one named ``image``, ``img``, ``jpg``...
        caption_column: the column with the captions; None: ``caption``, ``text``, ``txt``, ``prompt``.
        captions: items carry ``texts`` (False: images only).
        text_embeds_column: a column of precomputed text embeddings, each ``(L, D)`` (a list of
            lists or an ``Array2D``, any float type, trimmed to its tokens); items then carry
            ``text_embeds`` and ``text_masks`` instead of ``texts``.
        text_embed_dim: the width ``D`` every embedding must have (default: the first row's).
        config_name: the dataset's configuration (a name or a folder of data files).
        cache_dir: the ``datasets`` cache (default :func:`datasets_cache`, read now): where a name is
            looked up and where a folder of data files is prepared into Arrow.
        block_rows: rows per block, the unit the epoch's order permutes (as shards are).
        augment_horizontal_flip, convert_image_to, shuffle_window: as :class:`ShardDataset`.

    Items are ``{"images": uint8 (C, H, W), "texts": str}`` (or with ``text_embeds``). A bad row
    (no image, an image that cannot be decoded or a path that does not exist, a caption that is not
    a string or is empty, an embedding missing or of the wrong width) is left out of its batch and
    counted, naming the row (``row 17``). The dataset pickles (a
    cached or saved dataset by its memory-mapped files).
    """

    def __init__(self, source, image_size: int, *, split: str | None = None, image_column: str | None = None,
                 caption_column: str | None = None, captions: bool = True,
                 text_embeds_column: str | None = None, text_embed_dim: int | None = None,
                 config_name: str | None = None, cache_dir: str | os.PathLike | None = None, block_rows: int = 64,
                 augment_horizontal_flip: bool = True, convert_image_to: str | None = "RGB",
                 shuffle_window: int = 1000):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        for name, value in (("block_rows", block_rows), ("shuffle_window", shuffle_window)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        table, self.label = load_hf_dataset(source, split=split, config_name=config_name, cache_dir=cache_dir)
        if len(table) == 0:
            raise ValueError(f"{self.label} holds no row")
        self.image_column = _column(table.features, image_column, IMAGE_COLUMNS, "image", True)
        if text_embeds_column is not None:
            _column(table.features, text_embeds_column, (), "text_embeds", False)
        self.embeds_column = text_embeds_column
        self.caption_column = (_column(table.features, caption_column, CAPTION_COLUMNS, "caption", False)
                               if captions and text_embeds_column is None else None)
        columns = [c for c in (self.image_column, self.caption_column, self.embeds_column) if c is not None]
        self.table = table.select_columns(columns).with_format("arrow")  # rows as Arrow: decoded here
        self.block_rows = block_rows
        self._check_first_row()
        self.image_size, self.augment_horizontal_flip = image_size, augment_horizontal_flip
        self.convert_image_to, self.captions, self.shuffle_window = convert_image_to, bool(captions), shuffle_window
        self.text_embeds = text_embeds_column is not None
        self.text_embed_dim = text_embed_dim
        if self.text_embeds and text_embed_dim is None:
            self.text_embed_dim = int(_row_embedding(next(self.shard_samples(0, 1))["embeds"]).shape[1])
        self.total = len(table)
        self.counts = _BlockSizes(block_rows, self.total)
        self.urls = _BlockNames(self.label, block_rows, self.total)

    def _check_first_row(self) -> None:
        first = self.table[:1].column(self.image_column).to_pylist()[0]
        if isinstance(first, str) and "://" in first:
            raise ValueError(f"image_column={self.image_column!r} holds URLs ({first}), as the reference's url_label: "
                             "images are not downloaded while training; fetch them first (img2dataset writes "
                             "webdataset shards for ShardDataset)")
        if self.embeds_column is not None:
            try:
                _row_embedding(next(self.shard_samples(0, 1))["embeds"])
            except ValueError as error:
                raise ValueError(f"text_embeds_column={self.embeds_column!r}, row 0: {error}") from None

    def split_validation(self, fraction: float, seed: int) -> tuple[HFDataset, HFDataset]:
        """``(train, valid)``: a random ``fraction`` of the rows (at least one, drawn from ``seed``)
        becomes the validation set, without flips, and the rest the training set (both read
        through ``datasets``' index mapping, 8 bytes a row; rows keep their table order)."""
        n_valid = max(1, int(self.total * fraction))
        if n_valid >= self.total:
            raise ValueError(f"{self.label} has {self.total} rows, too few to split {fraction} off "
                             "(split_valid_fraction)")
        order = np.random.default_rng(seed).permutation(self.total)
        return (self._rows(np.sort(order[n_valid:]), "training split", self.augment_horizontal_flip),
                self._rows(np.sort(order[:n_valid]), "validation split", False))

    def _rows(self, rows: np.ndarray, part: str, flip: bool) -> HFDataset:
        subset = copy.copy(self)
        subset.table = self.table.select(rows)
        subset.label, subset.total, subset.augment_horizontal_flip = f"{self.label} ({part})", len(rows), flip
        subset.counts = _BlockSizes(self.block_rows, subset.total)
        subset.urls = _BlockNames(subset.label, self.block_rows, subset.total)
        return subset

    def __repr__(self) -> str:
        return (f"HFDataset({self.label!r}, {self.total} rows, image_column={self.image_column!r}, "
                f"caption_column={self.caption_column!r}, image_size={self.image_size})")

    def shard_samples(self, shard: int, expected: int, skip: int = 0):
        """Rows ``skip .. expected - 1`` of block ``shard`` as raw samples ``{"__url__", "__key__",
        "image", "caption", "embeds"}`` (an ``Image`` cell is ``{"bytes", "path"}``, an embedding
        the row's Arrow list of lists)."""
        first = shard * self.block_rows
        rows = self.table[first + skip:first + expected]  # a pyarrow Table
        images = rows.column(self.image_column).to_pylist()
        texts = rows.column(self.caption_column).to_pylist() if self.caption_column else [None] * len(images)
        embeds = [None] * len(images)
        if self.embeds_column is not None:
            column = rows.column(self.embeds_column).combine_chunks()
            column = getattr(column, "storage", column)  # an Array2D is an extension over lists of lists
            embeds = [column[i].values if column[i].is_valid else None for i in range(len(column))]
        for offset, (image, text, embed) in enumerate(zip(images, texts, embeds)):
            yield {"__url__": self.label, "__key__": f"row {first + skip + offset}", "image": image, "caption": text,
                   "embeds": embed}

    def decode(self, raw: dict, flip: bool) -> dict:
        """One row as a training item; raises ValueError naming what is wrong with it."""
        data = self._image_bytes(raw["image"])
        try:
            item = {"images": decode_image(data, self.image_size, self.convert_image_to, flip)}
        except Exception as error:  # PIL raises many types on bad bytes
            raise ValueError(f"unreadable image ({type(error).__name__}: {error})") from None
        if self.text_embeds:
            embeds = _row_embedding(raw["embeds"])
            if embeds.shape[1] != self.text_embed_dim:
                raise ValueError(f"text embedding of width {embeds.shape[1]}, expected {self.text_embed_dim}")
            item["text_embeds"] = embeds
            item["text_masks"] = torch.ones(embeds.shape[0], dtype=torch.bool)
        elif self.captions:
            text = raw["caption"]
            if not isinstance(text, str):
                raise ValueError(f"the caption is not a string ({type(text).__name__})")
            if not text.strip():
                raise ValueError("the caption is empty")
            item["texts"] = text.strip()
        return item

    def _image_bytes(self, cell) -> bytes:
        if isinstance(cell, dict):  # an Image feature's storage
            if cell.get("bytes") is not None:
                return cell["bytes"]
            cell = cell.get("path")
        if isinstance(cell, (bytes, bytearray)):
            return bytes(cell)
        if isinstance(cell, str):
            if "://" in cell:
                raise ValueError(f"the image is a URL ({cell}); images are not downloaded while training")
            try:
                return Path(cell).read_bytes()
            except OSError as error:
                raise ValueError(f"image file {cell!r} cannot be read ({type(error).__name__})") from None
        raise ValueError("no image" if cell is None else f"the image cell holds a {type(cell).__name__}")
