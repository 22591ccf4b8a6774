"""Crash-safe, pickle-free checkpoint files.

One checkpoint is ONE safetensors file, whatever its extension (``./checkpoint.pt`` works). Tensors
are stored under flat string keys; everything else (the cascade's config, the trainer's state) is
JSON inside the safetensors string metadata:

- ``format`` = ``"imagen-checkpoint"``, ``format_version``,
- ``imagen_config``: the cascade's config JSON,
- ``trainer_state``: JSON with steps, optimizer groups, scheduler, grad scaler, EMA counters,
  data position, ...
- ``tensors_sha256``: a digest of every tensor's name, dtype, shape and bytes.

A file is written to a temporary name in the destination folder, flushed and fsync'd, then renamed
over the destination with :func:`os.replace`, so a crash mid-save leaves any previous file intact.
Loading checks the format, the header and the file length, then the digest; it never unpickles.

Every function takes an optional fsspec filesystem ``fs`` (see :mod:`imagen.trainer.storage`). On
the local filesystem the write is the atomic one above; on any other (``memory://``, ``s3://``,
``gs://``...) the file is written whole to a temporary name beside the destination and then moved
onto it (``fs.mv``): a crash while writing leaves the previous file intact, and the move is as
atomic as that filesystem's rename (object stores copy, then delete).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file, save_file
from safetensors.torch import save as save_bytes

from .storage import is_local, join, local_path

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

CHECKPOINT_FORMAT = "imagen-checkpoint"
"""Value of the ``format`` metadata entry of every checkpoint this package writes."""

CHECKPOINT_FORMAT_VERSION = 1
"""Version of the checkpoint layout; bumped when the layout changes incompatibly."""

_MAX_HEADER_BYTES = 100 * 1024 * 1024
_FOLDER_NAME = re.compile(r"^checkpoint\.(\d+)\.safetensors$")
_REFERENCE_FOLDER_NAME = re.compile(r"^checkpoint\.(\d+)\.pt$")  # imagen-pytorch's, converted on load


class CheckpointError(ValueError):
    """A file is not a valid imagen checkpoint: wrong format, torn, truncated, corrupt or a pickle."""


class Checkpoint:
    """A loaded checkpoint: ``tensors`` (name -> CPU tensor), ``imagen_config`` (JSON text or None),
    ``trainer_state`` (a dict, empty when absent) and the raw string ``metadata``."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
        self.tensors = tensors
        self.metadata = metadata
        self.imagen_config: str | None = metadata.get("imagen_config")
        self.trainer_state: dict = json.loads(metadata.get("trainer_state", "{}"))

    def with_prefix(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors whose name starts with ``prefix``, with the prefix stripped."""
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def _tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        digest.update(f"{name}|{t.dtype!s}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached tensors that share no storage (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
        t = t.detach().to("cpu").contiguous()
        if t.numel():
            key = (t.untyped_storage().data_ptr(), t.storage_offset())
            if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
                t = t.clone()
            seen.add((t.untyped_storage().data_ptr(), t.storage_offset()))
        out[name] = t
    return out


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


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
    ``trainer_state`` any JSON-serialisable mapping. The file is written to a temporary name in the
    same folder, fsync'd and renamed over ``path``: a crash at any moment leaves either the old file
    or the new one, never a torn one. With a non-local fsspec ``fs`` the file goes to a temporary
    name beside ``path`` and is then moved onto it (``path`` is that filesystem's path, returned).
    """
    prepared = _prepare_tensors(tensors)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_FORMAT_VERSION),
        "tensors_sha256": _tensor_digest(prepared),
        "trainer_state": json.dumps(dict(trainer_state or {}), allow_nan=True),
    }
    if imagen_config is not None:
        if not isinstance(imagen_config, str):
            raise TypeError(f"imagen_config must be a JSON string, got {type(imagen_config).__name__}")
        metadata["imagen_config"] = imagen_config
    if not is_local(fs):
        return _save_remote(fs, str(path), prepared, metadata)
    path = local_path(path)
    folder = path.parent if str(path.parent) else Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        save_file(prepared, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return path


def _save_remote(fs, path: str, prepared: dict, metadata: dict) -> str:
    """Writes the file whole to a temporary name beside ``path`` on ``fs``, then moves it onto ``path``."""
    folder, name = path.rsplit("/", 1) if "/" in path else ("", path)
    if folder:
        fs.makedirs(folder, exist_ok=True)
    tmp = join(folder, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    data = save_bytes(prepared, metadata=metadata)
    try:
        with fs.open(tmp, "wb") as handle:
            handle.write(data)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise
    return path


def _read_header(path, handle, size: int) -> tuple[dict, int]:
    head = handle.read(8)
    if head[:2] == b"PK":
        raise CheckpointError(
            f"{path} is a zip archive (a torch.save / pickle checkpoint); imagen checkpoints are "
            "safetensors files and pickles are never unpickled here, because unpickling can run arbitrary code "
            "(ImagenTrainer.load and `imagen convert` read imagen-pytorch checkpoints, weights only)"
        )
    if head[:1] == b"\x80":
        raise CheckpointError(
            f"{path} is a Python pickle; imagen checkpoints are safetensors files and pickles are "
            "never loaded, because unpickling can run arbitrary code"
        )
    if len(head) < 8:
        raise CheckpointError(f"{path} is truncated: {size} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
        raise CheckpointError(
            f"{path} is torn or not a safetensors file: header length {header_len} does not fit "
            f"in the file's {size} bytes"
        )
    raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} has an unreadable safetensors header ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a malformed safetensors header (not a JSON object)")
    return header, 8 + header_len


def _check_layout(path, header: dict, data_start: int, size: int) -> dict[str, str]:
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not an imagen checkpoint "
            f"(metadata format={metadata.get('format')!r}, expected {CHECKPOINT_FORMAT!r})"
        )
    version = metadata.get("format_version", "")
    if not version.isdigit() or int(version) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format_version={version!r}; this version of imagen.trainer reads "
            f"versions up to {CHECKPOINT_FORMAT_VERSION}"
        )
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path} has a malformed entry for tensor {name!r}")
        end = max(end, offsets[1])
    if data_start + end != size:
        raise CheckpointError(
            f"{path} is torn or truncated: its header describes {data_start + end} bytes, the file has {size}"
        )
    return metadata


def load_checkpoint(path: str | os.PathLike, fs=None) -> Checkpoint:
    """Read and verify one checkpoint file (on the fsspec filesystem ``fs``, local by default);
    never unpickles.

    Raises :class:`CheckpointError` (a ``ValueError``) for a pickle or zip file, a safetensors file
    that is not an imagen checkpoint, a torn or truncated file, or tensors whose digest does not
    match; ``FileNotFoundError`` when ``path`` does not exist.
    """
    if is_local(fs):
        path = local_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist or is not a file")
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header, data_start = _read_header(path, handle, size)
        metadata = _check_layout(path, header, data_start, size)
        read = lambda: load_file(str(path), device="cpu")  # noqa: E731 - memory-mapped
    else:
        path = str(path)
        if not fs.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist or is not a file")
        data = fs.cat_file(path)
        header, data_start = _read_header(path, io.BytesIO(data), len(data))
        metadata = _check_layout(path, header, data_start, len(data))
        read = lambda: load_bytes(data)  # noqa: E731
    try:
        tensors = read()
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"{path} could not be read as safetensors ({error})") from None
    expected = metadata.get("tensors_sha256")
    if expected is not None and _tensor_digest(tensors) != expected:
        raise CheckpointError(f"{path} is corrupt: its tensors do not match the digest written with them")
    try:
        return Checkpoint(tensors, dict(metadata))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} has unreadable trainer_state metadata ({error})") from None


def _folder_entries(folder, fs) -> list[tuple[str, object]]:
    """(file name, path) of every file in ``folder`` (none when it does not exist)."""
    if is_local(fs):
        folder = local_path(folder)
        return [(child.name, child) for child in folder.iterdir() if child.is_file()] if folder.is_dir() else []
    folder = str(folder).rstrip("/")
    if not fs.isdir(folder):
        return []
    return [(entry["name"].rstrip("/").rsplit("/", 1)[-1], entry["name"])
            for entry in fs.ls(folder, detail=True) if entry.get("type") == "file"]


def checkpoint_folder_files(folder: str | os.PathLike, fs=None, *, include_reference: bool = False) -> list:
    """The ``checkpoint.<total steps>.safetensors`` files in ``folder`` (on ``fs``), oldest (fewest
    steps) first; with ``include_reference`` also imagen-pytorch's ``checkpoint.<steps>.pt`` files
    (ours first where both have the same number of steps)."""
    found = []
    for name, path in _folder_entries(folder, fs):
        match = _FOLDER_NAME.match(name)
        if match:
            found.append((int(match.group(1)), 1, path))
        elif include_reference and (match := _REFERENCE_FOLDER_NAME.match(name)):
            found.append((int(match.group(1)), 0, path))
    return [p for *_, p in sorted(found, key=lambda item: item[:2])]


def latest_checkpoint(folder: str | os.PathLike, fs=None, *, include_reference: bool = False):
    """The newest checkpoint file in ``folder`` (most steps), or None when there is none; with
    ``include_reference`` an imagen-pytorch ``checkpoint.<steps>.pt`` counts too."""
    files = checkpoint_folder_files(folder, fs, include_reference=include_reference)
    return files[-1] if files else None


def prune_checkpoints(folder: str | os.PathLike, keep: int, fs=None) -> list:
    """Delete all but the ``keep`` newest checkpoints in ``folder`` (``keep <= 0`` keeps them all, as
    the reference's ``max_checkpoints_keep=0``) and stale temporary files left by interrupted saves;
    returns the deleted paths."""
    if isinstance(keep, bool) or not isinstance(keep, int):
        raise ValueError(f"keep (max_checkpoints_keep) must be an int (<= 0 keeps every checkpoint), got {keep!r}")
    files = checkpoint_folder_files(folder, fs)
    doomed = files[:-keep] if keep > 0 else []
    for name, path in _folder_entries(folder, fs):
        if name.startswith(".checkpoint.") and ".tmp-" in name:
            pid = name.rsplit(".tmp-", 1)[1].split("-")[0]
            if pid != str(os.getpid()):
                doomed.append(path)
    for p in doomed:
        if is_local(fs):
            Path(p).unlink(missing_ok=True)
        elif fs.exists(p):
            fs.rm(p)
        logger.info("removed old checkpoint file %s", p)
    return doomed


def folder_checkpoint_name(total_steps: int) -> str:
    """File name of the checkpoint written after ``total_steps`` steps in a checkpoint folder."""
    return f"checkpoint.{int(total_steps)}.safetensors"
