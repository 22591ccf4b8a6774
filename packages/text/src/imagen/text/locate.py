"""Finding T5 files offline-first: known widths, local folders, the Hugging Face cache, the hub.

Every decision here reads the environment at call time (``HF_HUB_OFFLINE``, ``HF_HOME``,
``HF_HUB_CACHE``, ``HF_ENDPOINT``), so a process can change its mind without re-importing
transformers, and tests can point these variables at empty folders.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_T5_NAME = "google/t5-v1_1-base"
"""The text encoder the reference uses by default (embedding width 768)."""

DEFAULT_MAX_LENGTH = 256
"""Token budget per caption, as in the reference (the end-of-sequence token included)."""

KNOWN_DIMS: dict[str, int] = {
    **{f"{prefix}t5-{size}": dim for prefix in ("", "google-t5/") for size, dim in
       (("small", 512), ("base", 768), ("large", 1024), ("3b", 1024), ("11b", 1024))},
    **{f"google/{family}-{size}": dim for family in ("t5-v1_1", "flan-t5") for size, dim in
       (("small", 512), ("base", 768), ("large", 1024), ("xl", 2048), ("xxl", 4096))},
}
"""Embedding width (``d_model``) of well-known T5 checkpoints, so no weights need loading to know it."""

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
HUB_NAME = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")
HUB_PROBE_TIMEOUT_S = 3.0
"""Seconds allowed to reach the hub before a download is attempted; past that we say it is unreachable."""


class TextEncoderNotFoundError(FileNotFoundError, ValueError):
    """The files of a text encoder are not on this machine and could not be downloaded.

    The message lists which files are missing, where we looked, and how to provide them. It is both a
    ``FileNotFoundError`` and a ``ValueError``, so either ``except`` clause catches it.
    """


def env_flag(name: str) -> bool:
    """True when environment variable ``name`` is set to a truthy value (1, true, yes, on)."""
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) forbids reaching the hub."""
    return env_flag("HF_HUB_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE")


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, resolved from the environment now (not at import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "huggingface" / "hub"


def is_local_folder(name_or_path: str | os.PathLike) -> bool:
    """True when ``name_or_path`` names an existing folder (tried before any hub name)."""
    return Path(name_or_path).expanduser().is_dir()


def cached_snapshot(repo_id: str, cache_dir: Path, revision: str = "main") -> Path | None:
    """The snapshot folder of ``repo_id`` at ``revision`` in a Hugging Face hub cache, or None when it
    is not cached (resolved by huggingface_hub itself, without touching the network)."""
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        return None


@dataclass(frozen=True)
class Located:
    """Where a text encoder's files are: a folder to load from, or a hub name to download."""

    source: str
    """A folder path, or the hub name when the files have to be downloaded."""
    local: bool
    """True when every file is already on this machine."""


def missing_files(folder: Path | None) -> list[str]:
    """The groups of files a loadable T5 needs that ``folder`` lacks (all of them when it is None)."""
    needed = [("config.json",), WEIGHT_FILES, TOKENIZER_FILES]
    missing = []
    for group in needed:
        if folder is None or not any((folder / name).is_file() for name in group):
            missing.append(" or ".join(group))
    return missing


def not_found_error(name_or_path: str, folder: Path | None, cache_dir: Path, why: str) -> TextEncoderNotFoundError:
    """The one clear error for a text encoder whose files are missing, with how to provide them."""
    where = f"the folder {folder}" if folder is not None else f"the Hugging Face cache {cache_dir}"
    lines = [
        f"cannot load the text encoder {name_or_path!r}: {why}.",
        f"Missing from {where}: {', '.join(missing_files(folder))}.",
        "Provide them in one of these ways:",
        f"  - download on a machine with internet (huggingface-cli download {name_or_path}, or "
        f"T5EncoderModel.from_pretrained) and copy the cache folder here; point HF_HOME or HF_HUB_CACHE at it;",
        "  - or save the model and its tokenizer with save_pretrained into a folder and pass that folder's path;",
        "  - or unset HF_HUB_OFFLINE on a machine that can reach the hub, to download once.",
    ]
    if folder is not None and (folder / "spiece.model").is_file() and not (folder / "tokenizer.json").is_file():
        lines.append("Note: this folder has only spiece.model; converting it needs the sentencepiece package, or "
                     "save a fast tokenizer (tokenizer.json) with save_pretrained on a machine that has it.")
    return TextEncoderNotFoundError("\n".join(lines))


def hub_reachable(timeout: float | None = None) -> bool:
    """True when a TCP connection to the hub endpoint (``HF_ENDPOINT``) opens within ``timeout`` seconds.

    ``timeout`` defaults to :data:`HUB_PROBE_TIMEOUT_S` (read at call time).
    Name resolution runs in a daemon thread too, because ``getaddrinfo`` ignores socket timeouts.
    """
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    timeout = HUB_PROBE_TIMEOUT_S if timeout is None else timeout
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="imagen-text-hub-probe")
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def locate(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
           local_files_only: bool = False) -> Located:
    """Finds a T5 checkpoint: a local folder first, then the hub cache, then (once, guarded) the hub.

    Raises :class:`TextEncoderNotFoundError` fast, without any network wait, when the files are
    missing and the hub is off limits (``HF_HUB_OFFLINE``, ``local_files_only``) or unreachable.
    """
    name = os.fspath(name_or_path)
    if is_local_folder(name):
        folder = Path(name).expanduser()
        if missing_files(folder):
            raise not_found_error(name, folder, hf_hub_cache(), "the folder is incomplete")
        return Located(str(folder), local=True)
    if not HUB_NAME.fullmatch(name):
        raise not_found_error(name, None, hf_hub_cache(), "it is not an existing folder, nor a hub name")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hf_hub_cache()
    snapshot = cached_snapshot(name, cache)
    if snapshot is not None and not missing_files(snapshot):
        return Located(str(snapshot), local=True)
    if local_files_only or hub_offline():
        reason = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        raise not_found_error(name, snapshot, cache, f"it is not in the cache and {reason}")
    if not hub_reachable():
        raise not_found_error(name, snapshot, cache, "it is not in the cache and the hub cannot be reached")
    logger.info("downloading %s from the hub into %s", name, cache)
    return Located(name, local=False)


def get_encoded_dim(name_or_path: str | os.PathLike = DEFAULT_T5_NAME) -> int:
    """Embedding width ``D`` of a text encoder, without loading its weights.

    Known hub names come from :data:`KNOWN_DIMS`; otherwise ``config.json`` is read from a local folder
    or from the Hugging Face cache. Raises ``ValueError`` when the name is unknown and not found locally.
    """
    name = os.fspath(name_or_path)
    folder = Path(name).expanduser() if is_local_folder(name) else None
    if folder is None and name in KNOWN_DIMS:
        return KNOWN_DIMS[name]
    if folder is None:
        folder = cached_snapshot(name, hf_hub_cache())
    config = folder / "config.json" if folder is not None else None
    if config is None or not config.is_file():
        raise ValueError(
            f"get_encoded_dim: name_or_path={name!r} is not a known T5 name ({', '.join(sorted(KNOWN_DIMS))}) "
            f"and no config.json was found for it in a local folder or the Hugging Face cache {hf_hub_cache()}"
        )
    values = json.loads(config.read_text())
    for key in ("d_model", "hidden_size"):
        if isinstance(values.get(key), int):
            return values[key]
    raise ValueError(f"get_encoded_dim: {config} has neither d_model nor hidden_size; is {name!r} a T5 checkpoint?")
