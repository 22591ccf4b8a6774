"""Where checkpoints live: any fsspec filesystem (local by default).

``checkpoint_path`` may be a local path or any fsspec URL (``file://``, ``memory://``, ``s3://``,
``gs://``...); ``fs_kwargs`` go to the filesystem's constructor (credentials, project...), and an
fsspec filesystem object given as ``checkpoint_fs`` is used as it is. Local paths stay
``pathlib.Path`` objects; paths on other filesystems are that filesystem's strings (no protocol).
"""

from __future__ import annotations

import os
from pathlib import Path

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

__all__ = ["is_local", "join", "local_path", "resolve"]


def is_local(fs) -> bool:
    """Whether ``fs`` is the local filesystem (None means local)."""
    return fs is None or isinstance(fs, LocalFileSystem)


def local_path(path) -> Path:
    """A local path, from a ``Path``, a plain string or a ``file://`` URL."""
    text = os.fspath(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join(folder, name: str):
    """``folder / name`` for a local ``Path``, ``folder + "/" + name`` for a filesystem string."""
    if isinstance(folder, Path):
        return folder / name
    return f"{folder.rstrip('/')}/{name}" if folder else name


def resolve(path, fs=None, fs_kwargs: dict | None = None):
    """``(fs, path)``: the filesystem that holds ``path`` and the path on it.

    With ``fs`` given, ``path`` is a path on it (a URL with that filesystem's protocol is stripped);
    otherwise ``path`` (a local path or an fsspec URL) picks the filesystem, built with ``fs_kwargs``.
    A local result is ``(LocalFileSystem, Path)`` with relative paths left relative.
    """
    if fs_kwargs is not None and not isinstance(fs_kwargs, dict):
        raise TypeError(f"fs_kwargs must be a dict of fsspec filesystem options, got {type(fs_kwargs).__name__}")
    text = os.fspath(path)
    if fs is None:
        if "://" not in text:
            return LocalFileSystem(), Path(text)
        try:
            fs, text = url_to_fs(text, **(fs_kwargs or {}))
        except (ValueError, ImportError) as error:
            raise ValueError(f"checkpoint location {os.fspath(path)!r}: {error}") from None
    elif not hasattr(fs, "open") or not hasattr(fs, "mv"):
        raise TypeError(f"checkpoint_fs must be an fsspec filesystem, got {type(fs).__name__}")
    elif "://" in text:
        text = fs._strip_protocol(text)
    return (fs, local_path(text)) if is_local(fs) else (fs, text)
