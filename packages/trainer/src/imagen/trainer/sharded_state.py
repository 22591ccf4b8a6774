"""Training state saved through ``torch.distributed.checkpoint`` (DCP): each rank writes its part.

A part is one DCP folder (``.metadata`` plus ``__<rank>_<n>.distcp`` files) holding a flat dict of
tensors: a stage's optimizer state (``<param index>.<key>``, as :func:`optimizer_state_to_tensors`
names them; replicated tensors under DDP are written once, by the rank DCP's planner assigns them
to; sharded ``DTensor`` state under FSDP2 is written by the rank that holds each shard) or every
rank's generator states (``<name>.<rank>``, each rank writes its own).

Integrity: DCP checks that the folder has a ``.metadata`` file and that every requested key is in
it with a fitting shape, but no checksum of the data, and it reads ``.metadata`` with ``pickle``.
So each rank hashes the ``.distcp`` files it wrote (SHA-256), the main rank hashes ``.metadata``,
and the digests go into the checkpoint's manifest (a digest-checked container). On load every rank
checks ``.metadata`` and its share of the data files against the manifest before DCP reads
anything, and all ranks refuse together (one all-reduced flag) if any digest is missing or wrong.
A digest proves the files are the ones written with the manifest, not who wrote them, so
``.metadata`` is never given to ``pickle`` itself: :class:`MetadataReader` unpickles it with only
DCP's own metadata records and torch's sizes and dtypes allowed (nothing that could run code).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import StorageMeta

from imagen.cascade import CheckpointError

from .stage import any_process

__all__ = ["MetadataReader", "file_sha256", "load_part", "part_files", "save_part", "verify_part"]

METADATA = ".metadata"


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What a DCP ``.metadata`` pickle may name: DCP's metadata records, sizes, dtypes, layouts, paths.
_METADATA_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_METADATA_GLOBALS = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                     ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        allowed = (module in _METADATA_MODULES and not name.startswith("__")) or (module, name) in _METADATA_GLOBALS
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a DCP .metadata file")
        return super().find_class(module, name)


class MetadataReader(FileSystemReader):
    """DCP's file-system reader with ``.metadata`` read by a restricted unpickler (see the module
    docstring); a file naming anything else is a :class:`CheckpointError` naming the file."""

    def read_metadata(self, *args, **kwargs):
        rank = kwargs.get("rank")  # DCP's per-rank metadata files, when it writes those
        path = Path(self.path) / (METADATA if rank is None else f"__{rank}{METADATA}")
        try:
            metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path} is not a DCP metadata file we read: {error}") from None
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def save_part(folder: Path, tensors: dict[str, torch.Tensor], *, rank: int, main: bool) -> dict[str, str]:
    """Writes ``tensors`` as one DCP folder (a collective under a process group: every rank calls
    it with its own tensors) and returns ``{file name: sha256}`` of the files this rank wrote
    (its ``__<rank>_*.distcp`` data and, on the main rank, ``.metadata``)."""
    with warnings.catch_warnings():  # single process: DCP warns that it assumes one
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.save(dict(tensors), checkpoint_id=str(folder), no_dist=not _distributed())
    mine = sorted(p for p in folder.glob(f"__{rank}_*.distcp"))
    if main:
        mine.append(folder / METADATA)
    return {p.name: file_sha256(p) for p in mine}


def part_files(folder: Path) -> list[str]:
    """The names of a DCP folder's files (``.metadata`` and data files)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def verify_part(folder: Path, digests: dict[str, str], *, rank: int, world: int, accelerator=None) -> None:
    """Checks a DCP folder against its manifest ``digests`` before anything in it is read: the
    same file names, ``.metadata`` on every rank and the data files ``i`` with ``i % world ==
    rank`` (each rank its share). Raises :class:`CheckpointError` on every rank when any rank found
    a fault (with ``accelerator``, through one all-reduce)."""
    problem = None
    if not folder.is_dir():
        problem = f"{folder} is missing"
    elif METADATA not in digests:
        problem = f"the manifest lists no {METADATA} for {folder}"
    else:
        names = part_files(folder)
        if names != sorted(digests):
            problem = f"{folder} holds {names}, its manifest lists {sorted(digests)}"
        else:
            data = [n for n in names if n != METADATA]
            for name in [METADATA] + [n for i, n in enumerate(data) if i % world == rank]:
                if file_sha256(folder / name) != digests[name]:
                    problem = f"{folder / name} is corrupt: its bytes do not match the digest in the manifest"
                    break
    failed = problem is not None
    if accelerator is not None:
        failed = any_process(accelerator, failed)
    if failed:
        raise CheckpointError(problem or f"{folder}: another process found a corrupt or missing file (see its log)")


def load_part(folder: Path, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fills ``template`` (name -> tensor of the saved shape; a ``DTensor`` for sharded state) from a
    verified DCP folder and returns it. A collective under a process group."""
    reader = MetadataReader(str(folder))
    reader.read_metadata()  # refused here as a CheckpointError (inside dcp.load it would be wrapped)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(template, storage_reader=reader, no_dist=not _distributed())
    return template


def saved_shapes(folder: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{key: (shape, dtype)}`` of every tensor in a (verified) DCP folder, from its metadata."""
    metadata = MetadataReader(str(folder)).read_metadata()
    out = {}
    for key, item in metadata.state_dict_metadata.items():
        if hasattr(item, "size"):
            out[key] = (tuple(item.size), item.properties.dtype)
    return out
