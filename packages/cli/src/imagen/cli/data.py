"""The datasets a config's ``dataset`` section names: the training data (an image folder,
webdataset shards or a Hugging Face ``datasets`` table) and the held-out validation folder.

A video cascade (``imagen.video``) reads its folders as videos (``imagen.trainer.VideoDataset``:
animated GIFs and sub-folders of frame images, clips of ``dataset.video_frames`` frames); shards and
``datasets`` tables hold images, which train a video cascade as single frames."""

from __future__ import annotations

from pathlib import Path

from .errors import CliError


def dataset_from_config(config, *, image_size: int, with_cache: bool = True):
    """The training data (``with_cache``: with the text embedding cache, else the folder alone, for
    reading its captions)."""
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
    flip = data.augment_horizontal_flip
    dataset = _folder_dataset(config, data.folder, image_size=image_size, flip=flip, cache=cache)
    if len(dataset) == 0:
        raise CliError(f"dataset folder {data.folder!r} holds no readable images with extensions {list(data.exts)}")
    return dataset


def _folder_dataset(config, folder: str, *, image_size: int, flip: bool, cache=None):
    """``folder`` as images (``imagen.trainer.Dataset``), or as videos for a video cascade."""
    from imagen.trainer import Dataset, VideoDataset

    data = config.dataset
    options = dict(augment_horizontal_flip=flip, convert_image_to=data.convert_image_to, captions=data.captions,
                   text_embedding_cache=cache)
    if config.imagen.video:  # GIFs are the videos; the other extensions are frame images
        frame_exts = [ext for ext in data.exts if ext.lower().lstrip(".") != "gif"]
        return VideoDataset(folder, image_size, data.video_frames, frame_exts=frame_exts, **options)
    return Dataset(folder, image_size=image_size, exts=data.exts, **options)


def _hf_dataset(data, image_size: int):
    """The ``datasets`` table of ``dataset.hf_name`` / ``dataset.hf_path`` (errors as one line)."""
    from imagen.trainer import HFDataset

    key, source = ("hf_name", data.hf_name) if data.hf_name is not None else ("hf_path", data.hf_path)
    if key == "hf_path" and not Path(source).exists():
        raise CliError(f"dataset.hf_path {source!r} not found (a save_to_disk folder, or parquet/arrow files)")
    try:
        return HFDataset(source, image_size, split=data.hf_split, image_column=data.image_column,
                         caption_column=data.caption_column, captions=data.captions is not False,
                         text_embeds_column=data.text_embeds_column,
                         augment_horizontal_flip=data.augment_horizontal_flip, convert_image_to=data.convert_image_to)
    except (ValueError, TypeError, ImportError) as error:
        raise CliError(f"dataset.{key} {source!r}: {error}") from None


def valid_dataset(config, *, image_size: int):
    """The held-out images (or videos) of ``dataset.valid_folder``, read like the training folder
    (without a text cache and without flips), or None when the config names none."""
    data = config.dataset
    if data.valid_folder is None:
        return None
    if not Path(data.valid_folder).is_dir():
        raise CliError(f"validation folder {data.valid_folder!r} not found (dataset.valid_folder)")
    valid = _folder_dataset(config, data.valid_folder, image_size=image_size, flip=False)
    if len(valid) == 0 or (config.imagen.condition_on_text and not valid.has_captions):
        raise CliError(f"validation folder {data.valid_folder!r} holds no readable captioned images")
    return valid
