"""The datasets a config's ``dataset`` section names: the training data (an image folder,
webdataset shards or a Hugging Face ``datasets`` table) and the held-out validation folder."""

from __future__ import annotations

from pathlib import Path

from .errors import CliError


def dataset_from_config(config, *, image_size: int, with_cache: bool = True):
    from imagen.trainer import Dataset

    data = config.dataset
    if (data.hf_name is not None or data.hf_path is not None) and with_cache:
        return _hf_dataset(data, image_size)
    if data.shards is not None and with_cache:
        from imagen.trainer import ShardDataset

        return ShardDataset(data.shards, image_size=image_size, augment_horizontal_flip=data.augment_horizontal_flip,
                            convert_image_to=data.convert_image_to, captions=data.captions is not False)
    if not Path(data.folder).is_dir():
        raise CliError(f"dataset folder {data.folder!r} not found (set dataset.folder in the config)")
    cache = None
    if with_cache and data.text_embedding_cache is not None:
        from imagen.text import TextEmbeddingCache

        if not Path(data.text_embedding_cache).is_dir():
            raise CliError(
                f"text embedding cache {data.text_embedding_cache!r} not found (write it with `imagen encode-text`)"
            )
        cache = TextEmbeddingCache(data.text_embedding_cache)
    dataset = Dataset(
        data.folder, image_size=image_size, exts=data.exts, augment_horizontal_flip=data.augment_horizontal_flip,
        convert_image_to=data.convert_image_to, captions=data.captions, text_embedding_cache=cache,
    )
    if len(dataset) == 0:
        raise CliError(f"dataset folder {data.folder!r} holds no readable images with extensions {list(data.exts)}")
    return dataset


def _hf_dataset(data, image_size: int):
    """The ``datasets`` table of ``dataset.hf_name`` / ``dataset.hf_path`` (errors as one line)."""
    from imagen.trainer import HFDataset

    key, source = ("hf_name", data.hf_name) if data.hf_name is not None else ("hf_path", data.hf_path)
    if key == "hf_path" and not Path(source).exists():
        raise CliError(f"dataset.hf_path {source!r} not found (a save_to_disk folder, or parquet/arrow files)")
    try:
        return HFDataset(source, image_size, split=data.hf_split, image_column=data.image_column,
                         caption_column=data.caption_column, captions=data.captions is not False,
                         augment_horizontal_flip=data.augment_horizontal_flip, convert_image_to=data.convert_image_to)
    except (ValueError, TypeError, ImportError) as error:
        raise CliError(f"dataset.{key} {source!r}: {error}") from None


def valid_dataset(config, *, image_size: int):
    """The held-out images of ``dataset.valid_folder``, read like the training folder (without a
    text cache and without flips), or None when the config names none."""
    from imagen.trainer import Dataset

    data = config.dataset
    if data.valid_folder is None:
        return None
    if not Path(data.valid_folder).is_dir():
        raise CliError(f"validation folder {data.valid_folder!r} not found (dataset.valid_folder)")
    valid = Dataset(data.valid_folder, image_size=image_size, exts=data.exts, augment_horizontal_flip=False,
                    convert_image_to=data.convert_image_to, captions=data.captions)
    if len(valid) == 0 or (config.imagen.condition_on_text and not valid.has_captions):
        raise CliError(f"validation folder {data.valid_folder!r} holds no readable captioned images")
    return valid
