"""Crash-safe, pickle-free checkpoint files.

One checkpoint is ONE safetensors file, whatever its extension (``./checkpoint.pt`` works). Tensors
are stored under flat string keys; everything else (the cascade's config, the trainer's state) is
JSON inside the safetensors string metadata:

- ``format`` = ``"imagen-checkpoint"``, ``format_version``,
- ``imagen_config``: the cascade's config JSON,
- ``trainer_state``: JSON with steps, optimizer groups, scheduler, grad scaler, EMA counters,
  data position, ...
- ``tensors_sha256``: a digest of every tensor's name, dtype, shape and bytes.

The file is a container of :mod:`imagen.cascade.container`, the one format every reader checks
(``ImagenTrainer.load``, ``load_imagen_from_checkpoint``, ``cascade-cli sample --model``): it is
written to ``.<name>.partial-<pid>-<hex>`` in the destination folder, fsync'd, renamed over the
destination and the folder fsync'd, so a crash mid-save leaves any previous file intact and at most
a partial file, which :func:`prune_checkpoints` (and the trainer at start-up) removes. Loading
checks the format, version, header, offsets, file length and the (mandatory) digest; it never
unpickles.

Every function takes an optional fsspec filesystem ``fs`` (see :mod:`imagen.trainer.storage`). On
the local filesystem the write is the atomic one above; on any other (``memory://``, ``s3://``,
``gs://``...) the file is written whole to a temporary name beside the destination and then moved
onto it (``fs.mv``): a crash while writing leaves the previous file intact, and the move is as
atomic as that filesystem's rename (object stores copy, then delete).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from imagen.cascade import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    parse_checkpoint_json,
    read_container,
    remove_stale_partials,
    write_container,
)

from .storage import is_local, local_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "checkpoint_folder_files",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

_FOLDER_NAME = re.compile(r"^checkpoint\.(\d+)\.safetensors$")
_REFERENCE_FOLDER_NAME = re.compile(r"^checkpoint\.(\d+)\.pt$")  # imagen-pytorch's, converted on load
_STAGED_FOLDER_NAME = re.compile(r"^checkpoint\.(\d+)$")  # a per-stage checkpoint folder (checkpoint_folders)
LAYOUTS = ("file", "folder")
"""Checkpoint layouts: one safetensors file, or a per-stage folder (:mod:`imagen.trainer.checkpoint_folders`)."""


class Checkpoint:
    """A loaded checkpoint: ``tensors`` (name -> CPU tensor), ``imagen_config`` (JSON text or None),
    ``trainer_state`` (a dict, empty when absent) and the raw string ``metadata``; ``source``
    names the file in errors."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str], source="the checkpoint"):
        self.tensors = tensors
        self.metadata = metadata
        self.imagen_config: str | None = metadata.get("imagen_config")
        if self.imagen_config is not None:
            config = parse_checkpoint_json(self.imagen_config, f"{source} (metadata 'imagen_config')")
            if not isinstance(config, dict):
                raise CheckpointError(f"{source} has imagen_config metadata that is not a JSON object")
        state = parse_checkpoint_json(metadata.get("trainer_state", "{}"), f"{source} (metadata 'trainer_state')")
        if not isinstance(state, dict):
            raise CheckpointError(f"{source} has trainer_state metadata that is not a JSON object")
        self.trainer_state: dict = state

    def with_prefix(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors whose name starts with ``prefix``, with the prefix stripped."""
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def save_checkpoint(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    *,
    imagen_config: str | None = None,
    trainer_state: Mapping | None = None,
    fs=None,
) -> Path | str:
    """Write one checkpoint file atomically and return its path.

    ``tensors`` maps names to tensors (moved to CPU); ``imagen_config`` is the cascade's config JSON;
    ``trainer_state`` any JSON-serialisable mapping. The file is one container of
    :mod:`imagen.cascade.container`, written by its atomic write (a partial name in the same folder,
    fsync'd and renamed over ``path``, the folder fsync'd): a crash at any moment leaves either the
    old file or the new one, never a torn one. With a non-local fsspec ``fs`` the file goes to a
    partial name beside ``path`` and is then moved onto it (``path`` is that filesystem's path).
    """
    metadata = {"trainer_state": json.dumps(dict(trainer_state or {}), allow_nan=True)}
    if imagen_config is not None:
        if not isinstance(imagen_config, str):
            raise TypeError(f"imagen_config must be a JSON string, got {type(imagen_config).__name__}")
        metadata["imagen_config"] = imagen_config
    local = is_local(fs)
    return write_container(local_path(path) if local else str(path), tensors, format=CHECKPOINT_FORMAT,
                           version=CHECKPOINT_FORMAT_VERSION, metadata=metadata, fs=None if local else fs)


def load_checkpoint(path: str | os.PathLike, fs=None) -> Checkpoint:
    """Read and verify one checkpoint file (on the fsspec filesystem ``fs``, local by default);
    never unpickles.

    Raises :class:`CheckpointError` (a ``ValueError``) for a pickle or zip file, a safetensors file
    that is not an imagen checkpoint, a torn or truncated file, a missing digest or tensors whose
    digest does not match; ``FileNotFoundError`` when ``path`` does not exist.
    """
    local = is_local(fs)
    container = read_container(local_path(path) if local else str(path),
                               formats={CHECKPOINT_FORMAT: CHECKPOINT_FORMAT_VERSION}, fs=None if local else fs)
    return Checkpoint(container.tensors, container.metadata, container.path)


def check_layout(layout, fs=None, accelerator=None) -> str:
    """``layout`` checked: one of :data:`LAYOUTS`, or None for the default: ``"folder"`` when
    ``accelerator`` trains with FSDP2 (sharded stages need the per-stage folder), else ``"file"``.
    ``"folder"`` needs the local filesystem."""
    from .fsdp import fsdp_version

    sharded = accelerator is not None and fsdp_version(accelerator) is not None
    if layout is None:
        layout = "folder" if sharded else "file"
    if layout not in LAYOUTS:
        raise ValueError(f"checkpoint_layout must be one of {LAYOUTS} (or None), got {layout!r}")
    if layout == "folder" and not is_local(fs):
        raise ValueError("checkpoint_layout='folder' writes sharded parts from every process and needs a local "
                         "(or shared, mounted) filesystem; on fsspec URLs use checkpoint_layout='file'")
    if layout == "file" and sharded:
        raise ValueError("checkpoint_layout='file' cannot hold FSDP2-sharded stages (one process writes the file); "
                         "use checkpoint_layout='folder' (the default under FSDP2)")
    return layout


def _is_staged_folder(path: Path) -> bool:
    return path.is_dir() and (path / "trainer.safetensors").is_file()


def _folder_entries(folder, fs) -> list[tuple[str, object]]:
    """(name, path) of every file, and of every per-stage checkpoint folder, in ``folder`` (none
    when it does not exist)."""
    if is_local(fs):
        folder = local_path(folder)
        if not folder.is_dir():
            return []
        return [(child.name, child) for child in folder.iterdir()
                if child.is_file() or (_STAGED_FOLDER_NAME.match(child.name) and _is_staged_folder(child))]
    folder = str(folder).rstrip("/")
    if not fs.isdir(folder):
        return []
    return [(entry["name"].rstrip("/").rsplit("/", 1)[-1], entry["name"])
            for entry in fs.ls(folder, detail=True) if entry.get("type") == "file"]


def checkpoint_folder_files(folder: str | os.PathLike, fs=None, *, include_reference: bool = False) -> list:
    """The ``checkpoint.<total steps>.safetensors`` files and ``checkpoint.<total steps>/`` per-stage
    folders in ``folder`` (on ``fs``), oldest (fewest steps) first; with ``include_reference`` also
    imagen-pytorch's ``checkpoint.<steps>.pt`` files (ours first where both have the same number of
    steps; a folder after a file of the same steps)."""
    found = []
    for name, path in _folder_entries(folder, fs):
        match = _FOLDER_NAME.match(name)
        if match:
            found.append((int(match.group(1)), 1, path))
        elif match := _STAGED_FOLDER_NAME.match(name):
            found.append((int(match.group(1)), 2, path))
        elif include_reference and (match := _REFERENCE_FOLDER_NAME.match(name)):
            found.append((int(match.group(1)), 0, path))
    return [p for *_, p in sorted(found, key=lambda item: item[:2])]


def latest_checkpoint(folder: str | os.PathLike, fs=None, *, include_reference: bool = False):
    """The newest checkpoint file in ``folder`` (most steps), or None when there is none; with
    ``include_reference`` an imagen-pytorch ``checkpoint.<steps>.pt`` counts too."""
    files = checkpoint_folder_files(folder, fs, include_reference=include_reference)
    return files[-1] if files else None


def remove_partial_checkpoints(folder: str | os.PathLike, fs=None) -> list:
    """Deletes the partial files that interrupted saves left in ``folder`` (on ``fs``); returns them."""
    stale = remove_stale_partials(local_path(folder) if is_local(fs) else folder, None if is_local(fs) else fs)
    for p in stale:
        logger.info("removed partial file %s left by an interrupted save", p)
    return stale


def prune_checkpoints(folder: str | os.PathLike, keep: int, fs=None) -> list:
    """Delete all but the ``keep`` newest checkpoints in ``folder`` (``keep <= 0`` keeps them all, as
    the reference's ``max_checkpoints_keep=0``) and stale temporary files left by interrupted saves;
    returns the deleted paths."""
    if isinstance(keep, bool) or not isinstance(keep, int):
        raise ValueError(f"keep (max_checkpoints_keep) must be an int (<= 0 keeps every checkpoint), got {keep!r}")
    files = checkpoint_folder_files(folder, fs)
    doomed = files[:-keep] if keep > 0 else []
    stale = remove_partial_checkpoints(folder, fs)
    for p in doomed:
        if is_local(fs) and Path(p).is_dir():
            shutil.rmtree(p)
        elif is_local(fs):
            Path(p).unlink(missing_ok=True)
        elif fs.exists(p):
            fs.rm(p)
        logger.info("removed old checkpoint file %s", p)
    return doomed + stale


def folder_checkpoint_name(total_steps: int, layout: str = "file") -> str:
    """Name of the checkpoint written after ``total_steps`` steps in a checkpoint folder: a file
    ``checkpoint.<steps>.safetensors``, or a per-stage folder ``checkpoint.<steps>``."""
    return f"checkpoint.{int(total_steps)}" + (".safetensors" if layout == "file" else "")
