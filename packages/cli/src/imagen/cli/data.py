"""The datasets a config's ``dataset`` section names: the training data (an image folder, or
webdataset shards) and the held-out validation folder."""

from __future__ import annotations

from pathlib import Path

from .errors import CliError


def dataset_from_config(config, *, image_size: int, with_cache: bool = True):
    from imagen.trainer import Dataset

    data = config.dataset
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
