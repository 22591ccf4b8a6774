"""Saving and loading cascades: JSON for configs, safetensors for weights, nothing ever unpickled.

Two layouts are read:

- a folder written by ``save_pretrained``: ``config.json`` and ``model.safetensors``;
- one safetensors file (a trainer checkpoint, whatever its extension) whose metadata holds the
  cascade config as JSON under ``imagen_config`` and whose tensors are ``imagen.<key>`` (the
  weights) and optionally ``ema_imagen.<key>`` (the same state with EMA U-Net weights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import FORMAT, FORMAT_VERSION, CascadeConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLE_SIGNATURES = (b"PK\x03\x04", b"\x80")  # torch.save zip archives, raw pickles


def atomic_write(path: Path, write) -> None:
    """Calls ``write(temporary_path)``, flushes it to disk, then renames it onto ``path``: a crash
    leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu").contiguous() for key, value in module.state_dict().items()}


def save_pretrained(cascade, folder) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": cascade.config.to_dict()}
    atomic_write(folder / CONFIG_FILE, lambda p: p.write_text(json.dumps(document, indent=2, sort_keys=True)))
    atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(cpu_state(cascade), str(p), metadata={"format": FORMAT}))


def imagen_from_config_json(text: str):
    """A freshly initialised cascade from config JSON (``config.to_json()``, or a ``config.json``
    document written by ``save_pretrained``)."""
    config = CascadeConfig.from_json(text)
    return config.create()


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file, refusing pickles and torn files."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(PICKLE_SIGNATURES):
        raise ValueError(
            f"{path} is a pickle (torch.save) file; loading it could run arbitrary code, so it is refused. "
            "Checkpoints of this library are safetensors files"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {error}") from None


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
        raise ValueError(f"weights in {source} do not match the cascade's config ({misfit})")
    cascade.load_state_dict(tensors, strict=True)


def _config_document(text: str, source) -> str:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{source} must hold a JSON object")
    if "config" in document:  # the save_pretrained document
        if document.get("format") != FORMAT:
            raise ValueError(f"{source} is not an {FORMAT} config (format={document.get('format')!r})")
        document = document["config"]
    return json.dumps(document)


def load_pretrained(folder, *, device=None):
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} is not a saved cascade: {name} is missing")
    cascade = imagen_from_config_json(_config_document((folder / CONFIG_FILE).read_text(), folder / CONFIG_FILE))
    tensors, _ = read_safetensors(folder / WEIGHTS_FILE)
    load_weights_into(cascade, tensors, folder / WEIGHTS_FILE)
    return cascade.to(device) if device is not None else cascade


def is_pickle_file(path) -> bool:
    """Whether ``path`` starts like a ``torch.save`` archive or a raw pickle (e.g. a reference ``.pt``)."""
    with open(path, "rb") as handle:
        return handle.read(8).startswith(PICKLE_SIGNATURES)


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
        cascade = load_pretrained(path) if load_weights else imagen_from_config_json(
            _config_document((path / CONFIG_FILE).read_text(), path / CONFIG_FILE))
        return cascade.to(device) if device is not None else cascade
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    if is_pickle_file(path):
        # An imagen-pytorch .pt checkpoint: torch.load(weights_only=True) only, never a full unpickle.
        from .reference_checkpoint import imagen_from_reference_checkpoint

        cascade = imagen_from_reference_checkpoint(
            path, load_weights=load_weights, load_ema_if_available=load_ema_if_available)
        return cascade.to(device) if device is not None else cascade
    tensors, metadata = read_safetensors(path)
    if "imagen_config" not in metadata:
        raise ValueError(f"{path} has no imagen_config in its metadata: it is not a cascade checkpoint")
    cascade = imagen_from_config_json(_config_document(metadata["imagen_config"], path))
    if load_weights:
        has_ema = any(k.startswith("ema_imagen.") for k in tensors)
        prefix = "ema_imagen." if load_ema_if_available and has_ema else "imagen."
        weights = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        load_weights_into(cascade, weights, path)
    return cascade.to(device) if device is not None else cascade
