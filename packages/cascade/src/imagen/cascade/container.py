"""The one checkpoint container, and the one atomic write.

Every checkpoint this library writes or reads (trainer checkpoints, ``save_pretrained`` weights)
is ONE safetensors file whose string metadata holds, besides what the writer adds:

- ``format`` (e.g. ``"imagen-checkpoint"``) and ``format_version`` (a decimal integer),
- ``tensors_sha256``: a SHA-256 of every tensor's name, dtype, shape and bytes,
- ``metadata_sha256``: a SHA-256 of every other metadata entry (key and value), so that a flipped
  byte in a config or trainer state is caught too (absent only from version 1 trainer checkpoints,
  written before it existed).

All are mandatory. :func:`read_container` checks, before any tensor is built: that the file
is not a pickle or zip (those are never unpickled), that the header is a JSON object of sane size
and depth without duplicate names, that every tensor entry has a known dtype, a shape and offsets
that tile the data section exactly, that the file length matches, and that the format and version
are ones the caller reads; after reading, that the digest matches. Every refusal is a
:class:`CheckpointError` (a ``ValueError``) naming the file and what is wrong.

Writes go through :func:`atomic_write`: the bytes go to ``.<name>.partial-<pid>-<hex>`` in the
destination folder, are fsync'd, renamed over the destination, and the folder is fsync'd. A crash
at any moment leaves the previous file or the new one, plus at most a partial file under that one
pattern, which :func:`remove_stale_partials` deletes (trainer start-up and pruning call it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_codes
import hashlib
import io
import json
import math
import os
import re
import shutil
import struct
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CheckpointError",
    "Container",
    "atomic_write",
    "fsync_folder",
    "is_partial_name",
    "looks_like_torch_save",
    "metadata_digest",
    "parse_checkpoint_json",
    "partial_name",
    "read_container",
    "remove_stale_partials",
    "replace_folder",
    "tensor_digest",
    "write_container",
]

CHECKPOINT_FORMAT = "imagen-checkpoint"
"""``format`` of a trainer checkpoint (``ImagenTrainer.save``)."""

CHECKPOINT_FORMAT_VERSION = 2
"""Newest trainer checkpoint layout (2: ``metadata_sha256`` added; version 1 files are still read)."""

_METADATA_DIGEST_SINCE = {CHECKPOINT_FORMAT: 2}
"""Per format, the first version that carries ``metadata_sha256`` (1 where not listed)."""

PICKLE_SIGNATURES = (b"PK\x03\x04", b"\x80")
"""First bytes of a ``torch.save`` zip archive and of a raw pickle."""

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_JSON_DEPTH = 64
"""Deeper JSON (in the header or a metadata entry) is refused before it is parsed."""

_ITEM_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}
_PARTIAL = re.compile(
    r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)-[0-9a-f]{8}$"
    r"|^\.(?P<old_name>.+)\.tmp-(?P<old_pid>\d+)-[0-9a-f]{8}$"  # the names earlier versions wrote
    r"|^\.(?P<older_name>.+)\.(?P<older_pid>\d+)\.tmp$"
)


class CheckpointError(ValueError):
    """A file is not a valid checkpoint: a pickle, torn, truncated, corrupt, of another format or
    version, or lacking its digest. The message names the file and what is wrong."""


# ------------------------------------------------------------------------------ atomic writes


def partial_name(name: str) -> str:
    """The temporary name under which ``name`` is written: ``.<name>.partial-<pid>-<8 hex>``."""
    return f".{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def is_partial_name(name: str) -> bool:
    """Whether ``name`` is a temporary name made by :func:`partial_name` (or by earlier versions:
    ``.<name>.tmp-<pid>-<hex>``, ``.<name>.<pid>.tmp``)."""
    return _PARTIAL.match(name) is not None


def _partial_pid(name: str) -> int | None:
    match = _PARTIAL.match(name)
    if match is None:
        return None
    return int(match.group("pid") or match.group("old_pid") or match.group("older_pid"))


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True


def fsync_folder(folder) -> None:
    """Flushes ``folder``'s entries (a rename in it) to disk, where the platform allows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _named(error: OSError, path) -> OSError:
    """``error`` again (same type and errno), its message naming ``path`` and the outcome."""
    if error.errno is None:
        return error
    text = f"could not write {path}: {error.strerror or os.strerror(error.errno)}; nothing was replaced"
    return type(error)(error.errno, text)


def atomic_write(path, write: bytes | Callable[[Path], object]) -> Path:
    """Writes ``path`` atomically: ``write`` (bytes, or a function called with the temporary
    path that writes it) goes to a :func:`partial_name` beside ``path``, which is fsync'd and
    renamed onto ``path``; then the folder is fsync'd. On any error the partial file is removed,
    ``path`` is untouched, and an ``OSError`` names ``path``. Returns ``path``."""
    path = Path(path)
    folder = path.parent
    temporary = folder / partial_name(path.name)
    try:
        if isinstance(write, (bytes, bytearray, memoryview)):
            with open(temporary, "xb") as handle:
                handle.write(write)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            write(temporary)
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise _named(error, path) from error
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    fsync_folder(folder)
    return path


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno_codes.EINVAL, errno_codes.ENOSYS, errno_codes.EOPNOTSUPP):
        return False  # a filesystem without the flag: fall back
    raise OSError(code, os.strerror(code), str(b))


def replace_folder(staging: Path, folder: Path) -> None:
    """Puts the complete folder ``staging`` at ``folder`` in one step (an atomic exchange where the
    platform has one, else rename the old folder aside first) and removes the old contents."""
    if not folder.exists():
        os.rename(staging, folder)
    elif _rename_exchange(staging, folder):
        shutil.rmtree(staging, ignore_errors=True)  # staging now holds the old contents
    else:  # platforms without renameat2
        aside = folder.parent / partial_name(folder.name)
        os.rename(folder, aside)
        os.rename(staging, folder)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_folder(folder.parent)


def remove_stale_partials(folder, fs=None) -> list:
    """Deletes the partial files (and folders) that interrupted writes left in ``folder`` (on the
    fsspec filesystem ``fs``, local by default): those of :func:`partial_name`'s pattern whose
    process is gone (on another filesystem: whose process is not this one). Returns their paths;
    one that cannot be removed (a read-only folder) is left in place."""
    removed = []
    if fs is None:
        folder = Path(folder)
        if not folder.is_dir():
            return removed
        for child in folder.iterdir():
            pid = _partial_pid(child.name)
            if pid is not None and not _process_alive(pid):
                try:
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink(missing_ok=True)
                except OSError:  # a read-only folder: leave it, nothing is lost
                    continue
                removed.append(child)
        return removed
    folder = str(folder).rstrip("/")
    if not fs.isdir(folder):
        return removed
    for entry in fs.ls(folder, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        pid = _partial_pid(name)
        if pid is not None and pid != os.getpid():
            fs.rm(entry["name"], recursive=entry.get("type") == "directory")
            removed.append(entry["name"])
    return removed


# ------------------------------------------------------------------------------ the container


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        digest.update(f"{name}|{t.dtype!s}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def metadata_digest(metadata: Mapping[str, str]) -> str:
    """SHA-256 (hex) of every metadata entry but ``metadata_sha256`` itself, in key order."""
    digest = hashlib.sha256()
    for key in sorted(metadata):
        if key != "metadata_sha256":
            digest.update(key.encode() + b"\0" + metadata[key].encode() + b"\0")
    return digest.hexdigest()


def _prepare(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached tensors that share no storage (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got {name!r}")
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


def encode_container(tensors: Mapping[str, torch.Tensor], *, format: str, version: int,
                     metadata: Mapping[str, str] | None = None) -> bytes:
    """The bytes of a container holding ``tensors`` and the string ``metadata``."""
    prepared = _prepare(tensors)
    entries = dict(metadata or {})
    for key, value in entries.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"checkpoint metadata must map strings to strings, got {key!r}: {type(value).__name__}")
    entries.update(format=format, format_version=str(int(version)), tensors_sha256=tensor_digest(prepared))
    entries["metadata_sha256"] = metadata_digest(entries)
    return save_bytes(prepared, metadata=entries)


def write_container(path, tensors: Mapping[str, torch.Tensor], *, format: str, version: int,
                    metadata: Mapping[str, str] | None = None, fs=None):
    """Writes a container atomically (see :func:`atomic_write`) and returns ``path``. With a
    non-local fsspec ``fs`` the bytes go whole to a partial name beside ``path`` on it and are then
    moved onto ``path`` (as atomic as that filesystem's rename; object stores copy, then delete)."""
    data = encode_container(tensors, format=format, version=version, metadata=metadata)
    if fs is None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, data)
    path = str(path)
    folder, name = path.rsplit("/", 1) if "/" in path else ("", path)
    if folder:
        fs.makedirs(folder, exist_ok=True)
    temporary = f"{folder}/{partial_name(name)}" if folder else partial_name(name)
    try:
        with fs.open(temporary, "wb") as handle:
            handle.write(data)
        fs.mv(temporary, path)
    except BaseException:
        with contextlib.suppress(Exception):
            if fs.exists(temporary):
                fs.rm(temporary)
        raise
    return path


class Container:
    """A verified container: ``tensors`` (name -> CPU tensor), the string ``metadata``, ``path``,
    and the ``format`` / ``version`` it was written with."""

    def __init__(self, path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
        self.path, self.tensors, self.metadata = path, tensors, metadata
        self.format = metadata["format"]
        self.version = int(metadata["format_version"])


def _json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` in the JSON ``text``."""
    depth, in_string, escaped = 0, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _no_duplicates(pairs):
    names = [k for k, _ in pairs]
    if len(names) != len(set(names)):
        raise ValueError(f"duplicate names {sorted({k for k in names if names.count(k) > 1})[:5]}")
    return dict(pairs)


def parse_checkpoint_json(text: str, where) -> object:
    """``text`` parsed as JSON, refusing nesting deeper than :data:`MAX_JSON_DEPTH` and duplicate
    object names; any failure is a :class:`CheckpointError` naming ``where``."""
    if _json_depth_exceeds(text, MAX_JSON_DEPTH):
        raise CheckpointError(f"{where} holds JSON nested deeper than {MAX_JSON_DEPTH} levels; refused")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{where} is not valid JSON ({error})") from None


def looks_like_torch_save(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first 4 to 9 bytes) is a ``torch.save`` zip
    archive or a protocol 2+ pickle rather than a safetensors file (whose 8-byte little-endian
    header length may start with the same bytes, but whose 9th byte is ``{``)."""
    if len(head) >= 9 and head[8:9] == b"{":
        return False
    if head[:4] == b"PK\x03\x04":
        return True
    # PROTO <2..5>, then an opcode (opcodes are printable or >= 0x80, never a control byte)
    return len(head) >= 3 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2] >= 0x20


def _refuse_torch_save(path, head: bytes) -> None:
    if head[:2] == b"PK":
        raise CheckpointError(
            f"{path} is a zip archive (a torch.save / pickle checkpoint), not a safetensors checkpoint; it is "
            "never unpickled here, because unpickling can run arbitrary code (`cascade-cli convert` and "
            "ImagenTrainer.load read imagen-pytorch checkpoints, weights only)")
    if head[:1] == PICKLE_SIGNATURES[1]:
        raise CheckpointError(f"{path} is a Python pickle, not a safetensors checkpoint; pickles are never "
                              "loaded, because unpickling can run arbitrary code")


def _header(path, head: bytes, read: Callable[[int], bytes], size: int) -> tuple[dict, int]:
    """The parsed safetensors header and where the data section starts (``head``: the first 8
    bytes, ``read(n)``: the next ``n``)."""
    if len(head) < 8:
        _refuse_torch_save(path, head)
        raise CheckpointError(f"{path} is truncated: {size} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        _refuse_torch_save(path, head)
        raise CheckpointError(f"{path} is torn or not a safetensors file: its header length {header_len} does not "
                              f"fit in the file's {size} bytes")
    raw = read(header_len)
    if raw[:1] != b"{":
        _refuse_torch_save(path, head)
        raise CheckpointError(f"{path} is not a safetensors file (its header does not start with '{{')")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{path} has an unreadable safetensors header ({error})") from None
    header = parse_checkpoint_json(text, f"{path} (safetensors header)")  # a dict: it starts with "{"
    return header, 8 + header_len


def _check_entries(path, header: dict, data_start: int, size: int) -> dict[str, str]:
    """The metadata, once every tensor entry is known to tile the data section exactly."""
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{path} has a malformed header entry for tensor {name!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _ITEM_SIZES:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise CheckpointError(f"{path}: tensor {name!r} has malformed data_offsets {offsets!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * _ITEM_SIZES[dtype]:
            raise CheckpointError(f"{path}: tensor {name!r} of shape {shape} and dtype {dtype} does not fill its "
                                  f"data_offsets {offsets}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            raise CheckpointError(f"{path}: tensor {name!r} starts at {start}, expected {end} (overlapping or gapped "
                                  "data_offsets)")
        end = stop
    if data_start + end != size:
        raise CheckpointError(f"{path} is torn or truncated: its header describes {data_start + end} bytes, the "
                              f"file has {size}")
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path} has malformed metadata (it must map strings to strings)")
    return metadata


def _check_format(path, metadata: dict[str, str], formats: Mapping[str, int]) -> None:
    kind = metadata.get("format")
    if kind not in formats:
        raise CheckpointError(f"{path} is a safetensors file but not an imagen checkpoint: its metadata has "
                              f"format={kind!r}, expected {' or '.join(map(repr, formats))} (it is not a cascade "
                              "checkpoint written by this library)")
    version = metadata.get("format_version")
    if not (isinstance(version, str) and version.isdigit() and version.isascii()):
        raise CheckpointError(f"{path} has no valid format_version (got {version!r})")
    if not 1 <= int(version) <= formats[kind]:
        raise CheckpointError(f"{path} has {kind} format_version={version}; this version of imagen reads "
                              f"versions 1 to {formats[kind]}")
    required = ["tensors_sha256"]
    if int(version) >= _METADATA_DIGEST_SINCE.get(kind, 1):
        required.append("metadata_sha256")
    for key in required:
        digest = metadata.get(key)
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise CheckpointError(f"{path} has no {key} digest (got {digest!r}); its integrity cannot be checked, so "
                                  "it is refused")
    if "metadata_sha256" in metadata and metadata_digest(metadata) != metadata["metadata_sha256"]:
        raise CheckpointError(f"{path} is corrupt: its metadata does not match the digest written with it")


def read_container(path, *, formats: Mapping[str, int], fs=None) -> Container:
    """Reads and verifies the container at ``path`` (on the fsspec filesystem ``fs``, local by
    default), whose format must be a key of ``formats`` and version at most its value.

    Raises :class:`CheckpointError` for anything but a valid container, ``FileNotFoundError``
    when there is no file at ``path``. Never unpickles.
    """
    if fs is None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(errno_codes.ENOENT, f"checkpoint {path} does not exist or is not a file")
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header, data_start = _header(path, handle.read(8), handle.read, size)

        def load():
            return load_file(str(path), device="cpu")
    else:
        path = str(path)
        if not fs.isfile(path):
            raise FileNotFoundError(errno_codes.ENOENT, f"checkpoint {path} does not exist or is not a file")
        data = fs.cat_file(path)
        size = len(data)
        stream = io.BytesIO(data)
        header, data_start = _header(path, stream.read(8), stream.read, size)

        def load():
            return load_bytes(data)
    metadata = _check_entries(path, header, data_start, size)
    _check_format(path, metadata, formats)
    try:
        tensors = load()
    except Exception as error:  # safetensors' own error types
        raise CheckpointError(f"{path} could not be read as safetensors ({error})") from None
    if tensor_digest(tensors) != metadata["tensors_sha256"]:
        raise CheckpointError(f"{path} is corrupt: its tensors do not match the digest written with them")
    return Container(path, tensors, dict(metadata))
