"""Saving and loading cascades: JSON for configs, safetensors for weights, nothing ever unpickled.

Two layouts are read:

- a folder written by ``save_pretrained``: ``config.json`` and ``model.safetensors``;
- one safetensors file (a trainer checkpoint, whatever its extension) whose metadata holds the
  cascade config as JSON under ``imagen_config`` and whose tensors are ``imagen.<key>`` (the
  weights) and optionally ``ema_imagen.<key>`` (the same state with EMA U-Net weights).

Both weights files are containers of :mod:`imagen.cascade.container` (format, version and digest
checked on every load); every refusal is a :class:`~imagen.cascade.container.CheckpointError`
naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from .config import FORMAT, FORMAT_VERSION, CascadeConfig
from .container import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    atomic_write,
    encode_container,
    fsync_folder,
    looks_like_torch_save,
    parse_checkpoint_json,
    partial_name,
    read_container,
    remove_stale_partials,
    replace_folder,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CASCADE_FORMATS = {FORMAT: FORMAT_VERSION, CHECKPOINT_FORMAT: CHECKPOINT_FORMAT_VERSION}
"""The containers that hold a cascade: ``save_pretrained`` weights and trainer checkpoints."""

__all__ = ["atomic_write", "load_imagen_from_checkpoint", "load_pretrained", "read_safetensors", "save_pretrained"]


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu").contiguous() for key, value in module.state_dict().items()}


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def save_pretrained(cascade, folder) -> None:
    """Writes ``config.json`` and ``model.safetensors`` (a container) into ``folder`` as one
    step: both go to a sibling partial folder, which then replaces ``folder``. A failure (a full
    disk, a kill) leaves the previous folder (or none) and no partial folder from this process.
    An existing ``folder`` must hold nothing but those two files (it is replaced whole)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"save_pretrained: {folder} exists and is not a folder")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in (CONFIG_FILE, WEIGHTS_FILE))
        if foreign:
            raise ValueError(f"save_pretrained replaces the whole folder {folder}, which holds other files too "
                             f"({foreign[:5]}); give a new or empty folder, or one written by save_pretrained")
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(parent)
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cascade.config.to_dict()}
    config_bytes = json.dumps(document, indent=2, sort_keys=True).encode()
    weights_bytes = encode_container(cpu_state(cascade), format=FORMAT, version=FORMAT_VERSION,
                                     metadata={"config_sha256": hashlib.sha256(config_bytes).hexdigest()})
    staging = parent / partial_name(folder.name)
    try:
        staging.mkdir()
        _write_synced(staging / WEIGHTS_FILE, weights_bytes)
        _write_synced(staging / CONFIG_FILE, config_bytes)
        fsync_folder(staging)
        replace_folder(staging, folder)
    except OSError as error:
        _remove_tree(staging)
        if error.errno is None:
            raise
        raise type(error)(error.errno, f"save_pretrained could not write {folder}: "
                                       f"{error.strerror}; nothing was replaced") from error
    except BaseException:
        _remove_tree(staging)
        raise


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def imagen_from_config_json(text: str, source=None):
    """A freshly initialised cascade from config JSON (``config.to_json()``, or a ``config.json``
    document written by ``save_pretrained``); with ``source`` (the file it came from) any refusal
    is a :class:`CheckpointError` naming it."""
    if source is None:
        return CascadeConfig.from_json(text).create()
    try:
        config = CascadeConfig.from_json(_config_document(text, source))
    except (TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{source} holds an invalid cascade config ({error})") from None
    return config.create()


def read_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a cascade container (``save_pretrained`` weights or a trainer
    checkpoint), verified (format, version, digest); refuses pickles and torn files with a
    :class:`CheckpointError`."""
    container = read_container(path, formats=CASCADE_FORMATS)
    return container.tensors, container.metadata


def weights_misfit(cascade, tensors: dict[str, torch.Tensor]) -> str | None:
    """Why ``tensors`` (a state dict) do not fit ``cascade``: its missing, unexpected and misshapen
    keys (five of each at most), or None when they fit exactly."""
    expected = cascade.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    details = [f"{name} {keys[:5]}{' ...' if len(keys) > 5 else ''}"
               for name, keys in (("missing", missing), ("unexpected", unexpected),
                                  ("shape mismatch", mismatched)) if keys]
    return "; ".join(details) or None


def load_weights_into(cascade, tensors: dict[str, torch.Tensor], source) -> None:
    """Loads ``tensors`` into ``cascade``, or raises ValueError listing every key that does not fit."""
    misfit = weights_misfit(cascade, tensors)
    if misfit:
        raise CheckpointError(f"weights in {source} do not match the cascade's config ({misfit})")
    cascade.load_state_dict(tensors, strict=True)


def _config_document(text: str, source) -> str:
    """The cascade config JSON held by ``text`` (a ``save_pretrained`` document or a bare config)."""
    document = parse_checkpoint_json(text, source)
    if not isinstance(document, dict):
        raise CheckpointError(f"{source} must hold a JSON object, got {type(document).__name__}")
    if "config" in document:  # the save_pretrained document
        if document.get("format") != FORMAT:
            raise CheckpointError(f"{source} is not an {FORMAT} config (format={document.get('format')!r})")
        version = document.get("format_version")
        if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
            raise CheckpointError(f"{source} has format_version={version!r}; this version of imagen reads "
                                  f"versions 1 to {FORMAT_VERSION}")
        document = document["config"]
        if not isinstance(document, dict):
            raise CheckpointError(f"{source}: its config must be a JSON object, got {type(document).__name__}")
    return json.dumps(document)


def load_pretrained(folder, *, device=None, **hub_options):
    """The cascade saved by :func:`save_pretrained` in ``folder`` (or a Hub repo id, from the Hugging
    Face cache first: :func:`imagen.cascade.hub.resolve_pretrained` with ``hub_options``): its config,
    and weights from a verified container. Raises :class:`CheckpointError` naming the file at fault."""
    from .hub import resolve_pretrained

    folder = resolve_pretrained(folder, **hub_options)
    cascade, tensors = _read_pretrained(folder)
    load_weights_into(cascade, tensors, folder / WEIGHTS_FILE)
    return cascade.to(device) if device is not None else cascade


def _read_pretrained(folder: Path):
    """The fresh cascade of ``folder``'s config.json and its verified weights; the config's bytes
    must match the ``config_sha256`` written into the weights container with it."""
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} is not a saved cascade: {name} is missing")
    container = read_container(folder / WEIGHTS_FILE, formats={FORMAT: FORMAT_VERSION})
    config_bytes = (folder / CONFIG_FILE).read_bytes()
    if hashlib.sha256(config_bytes).hexdigest() != container.metadata.get("config_sha256"):
        raise CheckpointError(f"{folder / CONFIG_FILE} does not match the config digest in {folder / WEIGHTS_FILE} "
                              "(corrupt, edited, or from another save)")
    try:
        text = config_bytes.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{folder / CONFIG_FILE} is not UTF-8 text ({error})") from None
    return imagen_from_config_json(text, folder / CONFIG_FILE), container.tensors


def is_pickle_file(path) -> bool:
    """Whether ``path`` starts like a ``torch.save`` archive or a raw pickle (e.g. a reference ``.pt``)."""
    with open(path, "rb") as handle:
        return looks_like_torch_save(handle.read(9))


def load_imagen_from_checkpoint(
    checkpoint_path, load_weights: bool = True, load_ema_if_available: bool = False, *, device=None,
    use_ema: bool | None = None,
):
    """The cascade stored at ``checkpoint_path``: a ``save_pretrained`` folder or a trainer checkpoint.

    As in the reference: ``load_weights=False`` gives the freshly initialised cascade of the stored
    config; otherwise the trained (online) weights, or the EMA weights when
    ``load_ema_if_available`` and the checkpoint has them. ``use_ema`` is the former name of
    ``load_ema_if_available`` (kept for callers not yet moved).
    """
    if use_ema is not None:
        load_ema_if_available = use_ema
    path = Path(checkpoint_path)
    if path.is_dir():
        cascade = load_pretrained(path) if load_weights else _read_pretrained(path)[0]
        return cascade.to(device) if device is not None else cascade
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if is_pickle_file(path):
        # An imagen-pytorch .pt checkpoint: torch.load(weights_only=True) only, never a full unpickle.
        from .reference_checkpoint import imagen_from_reference_checkpoint

        cascade = imagen_from_reference_checkpoint(
            path, load_weights=load_weights, load_ema_if_available=load_ema_if_available)
        return cascade.to(device) if device is not None else cascade
    container = read_container(path, formats=CASCADE_FORMATS)
    tensors, metadata = container.tensors, container.metadata
    if "imagen_config" not in metadata:
        raise CheckpointError(f"{path} has no imagen_config in its metadata: it is not a cascade checkpoint")
    cascade = imagen_from_config_json(metadata["imagen_config"], f"{path} (metadata 'imagen_config')")
    if load_weights:
        has_ema = any(k.startswith("ema_imagen.") for k in tensors)
        prefix = "ema_imagen." if load_ema_if_available and has_ema else "imagen."
        weights = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        load_weights_into(cascade, weights, path)
    return cascade.to(device) if device is not None else cascade
