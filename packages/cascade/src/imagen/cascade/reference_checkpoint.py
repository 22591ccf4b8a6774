"""Reading imagen-pytorch (the reference package) trainer checkpoints, without unpickling code.

The reference's ``ImagenTrainer.save`` writes one ``torch.save`` file holding:

- ``model``: the cascade's state dict (``unets.<i>.<key>``: the online, trained weights),
- ``ema``: the state dict of an ``nn.ModuleList`` of ema-pytorch ``EMA`` wrappers, one per unet
  (``<i>.initted``, ``<i>.step``, ``<i>.online_model.<key>``, ``<i>.ema_model.<key>``), when the
  trainer kept an EMA,
- ``steps``: a ``(num_unets,)`` tensor of optimizer steps, ``version`` (a string),
- ``optim<i>``, ``scaler<i>``, and when used ``scheduler<i>`` (``CosineAnnealingLR``) and
  ``warmup<i>`` (pytorch-warmup's ``LinearWarmup``) state dicts,
- ``imagen_type`` (``"original"`` or ``"elucidated"``) and ``imagen_params`` (the
  ``ImagenConfig(...).dict()`` it was built from) when the cascade came from a config class.

All of these are plain containers of tensors, numbers and strings, which
``torch.load(weights_only=True)`` reads without running any code. That is the only way a file is
read here: a checkpoint that holds other objects (custom classes, functions) is refused with
:class:`ReferenceCheckpointError`, naming the file and the classes, and nothing in it is executed.
"""

from __future__ import annotations

import io
import os
import pickletools
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

from .config import CascadeConfig
from .container import CheckpointError, looks_like_torch_save
from .persistence import weights_misfit

__all__ = [
    "ReferenceCheckpoint",
    "ReferenceCheckpointError",
    "imagen_from_reference_checkpoint",
    "is_torch_save",
    "read_reference_checkpoint",
]

TORCH_SAVE_SIGNATURES = (b"PK\x03\x04", b"\x80")
"""The first bytes of a ``torch.save`` file: a zip archive (the default format) or a raw pickle."""

_IMAGEN_TYPES = {"original": "Imagen", "elucidated": "ElucidatedImagen"}


class ReferenceCheckpointError(CheckpointError):
    """A file is not a readable imagen-pytorch checkpoint (or would need a full unpickle); a
    :class:`~imagen.cascade.container.CheckpointError`, as every checkpoint refusal."""


def is_torch_save(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first 4+ bytes; 9 settle every case) is a
    ``torch.save`` file rather than a safetensors one."""
    return looks_like_torch_save(head)


_SAFE_PREFIXES = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset", "_codecs.encode")


def _pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` globals a raw (or legacy torch) pickle refers to, read from its opcodes
    with ``pickletools`` (a disassembler: nothing is built or run)."""
    found, strings = set(), []
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "GLOBAL":
                found.add(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.add(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # truncated or not a pickle: the loader's own error says so
        pass
    return sorted(name for name in found if not name.startswith(_SAFE_PREFIXES))


def _unsafe_globals(data: bytes) -> list[str]:
    """The classes / functions a weights-only load would refuse, found by disassembling the pickle
    (nothing is executed)."""
    if not data.startswith(b"PK"):
        return _pickle_globals(data)
    try:
        return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))))
    except Exception:  # a torn archive: the loader's own error says so
        return []


def _check_archive(data: bytes, name: str) -> None:
    """Refuses a ``torch.save`` zip archive whose records fail their CRC-32 (torch.load does not
    check them, so a flipped byte in a tensor would load silently)."""
    if not data.startswith(b"PK"):
        return
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        raise ReferenceCheckpointError(f"{name} is not a readable torch.save archive ({error})") from None
    if bad is not None:
        raise ReferenceCheckpointError(f"{name} is corrupt: the record {bad} fails its CRC-32 check")


def _torch_load(data: bytes, name: str) -> Any:
    _check_archive(data, name)
    unsafe = _unsafe_globals(data)
    if unsafe:
        raise ReferenceCheckpointError(
            f"{name} needs a full unpickle to load: it holds {', '.join(unsafe)}, which torch.load(weights_only=True) "
            "does not build; it was not loaded and nothing in it was run. Re-save it with only tensors, numbers and "
            "strings (for example torch.save of the state dicts), or load it yourself if you trust its origin"
        )
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError (an unsafe global), a torn zip, ...
        text = " ".join(str(error).split())
        if "GLOBAL" in text or "weights_only" in text.lower():
            found = text.split("GLOBAL ", 1)[1].split(" ", 1)[0] if "GLOBAL " in text else "an object"
            raise ReferenceCheckpointError(
                f"{name} needs a full unpickle to load: it holds {found}, which torch.load(weights_only=True) does "
                "not build; it was not loaded and nothing in it was run"
            ) from None
        raise ReferenceCheckpointError(f"{name} is not a readable torch.save checkpoint ({text[:300]})") from None


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON-like data (dicts, lists, numbers, strings, None); enum-like strings stay."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise ReferenceCheckpointError(f"imagen_params{where} holds a {type(value).__name__}, not a plain value")


def _state_dict(value: Any, key: str, name: str) -> dict[str, torch.Tensor]:
    """``value`` as a state dict (string keys, tensor values), or a refusal naming the file."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in value.items()):
        raise ReferenceCheckpointError(f"{name}: its {key!r} entry is not a state dict (names to tensors)")
    return dict(value)


class ReferenceCheckpoint:
    """The contents of an imagen-pytorch trainer checkpoint, in plain form.

    Attributes: ``name`` (where it was read from), ``version``, ``imagen_type``, ``imagen_params``
    (a plain dict or None), ``model`` (the cascade state dict, online weights), ``ema`` (the EMA
    ModuleList state dict or None), ``steps`` (list of ints, one per unet), and per 0-based unet
    index ``optimizers``, ``schedulers``, ``warmups``, ``scalers`` (the saved state dicts).
    """

    def __init__(self, contents: Mapping, name: str):
        if not isinstance(contents, Mapping) or "model" not in contents:
            keys = sorted(contents)[:10] if isinstance(contents, Mapping) else type(contents).__name__
            raise ReferenceCheckpointError(
                f"{name} is a torch.save file but not an imagen-pytorch trainer checkpoint "
                f"(no 'model' state dict; found {keys})"
            )
        self.name = name
        self.version = contents.get("version")
        self.imagen_type = contents.get("imagen_type")
        params = contents.get("imagen_params")
        try:
            self.imagen_params = _plain(params, "") if params is not None else None
        except RecursionError:
            raise ReferenceCheckpointError(f"{name} holds imagen_params nested too deeply to be a config") from None
        except ReferenceCheckpointError as error:
            raise ReferenceCheckpointError(f"{name}: {error}") from None
        self.model: dict[str, torch.Tensor] = _state_dict(contents["model"], "model", name)
        ema = contents.get("ema")
        self.ema: dict[str, torch.Tensor] | None = _state_dict(ema, "ema", name) if ema is not None else None
        steps = contents.get("steps")
        self.steps = [int(s) for s in steps.tolist()] if isinstance(steps, torch.Tensor) else None

        def per_unet(prefix: str) -> dict[int, Any]:
            return {int(key[len(prefix):]): value for key, value in contents.items()
                    if key.startswith(prefix) and key[len(prefix):].isdigit()}

        self.optimizers = per_unet("optim")
        self.schedulers = per_unet("scheduler")
        self.warmups = per_unet("warmup")
        self.scalers = per_unet("scaler")

    @property
    def num_unets(self) -> int:
        """Number of stages, from the state dict's ``unets.<i>.`` keys (or the step counter)."""
        indices = {int(k.split(".")[1]) for k in self.model if k.startswith("unets.") and k.split(".")[1].isdigit()}
        return max(len(self.steps or ()), max(indices, default=-1) + 1)

    def config(self) -> CascadeConfig:
        """Our cascade config built from ``imagen_params`` (the reference's ``ImagenConfig`` fields
        are our keywords). Raises :class:`ReferenceCheckpointError` when the checkpoint has none."""
        if self.imagen_params is None:
            raise ReferenceCheckpointError(
                f"{self.name} holds no imagen_params (its cascade was not built from an ImagenConfig): give the "
                "cascade, or its config, to rebuild it"
            )
        kind = _IMAGEN_TYPES.get(self.imagen_type or "original")
        if kind is None:
            raise ReferenceCheckpointError(f"{self.name} has imagen_type={self.imagen_type!r}; expected one of "
                                           f"{sorted(_IMAGEN_TYPES)}")
        try:
            return CascadeConfig.from_dict({"kind": kind, **self.imagen_params})
        except (TypeError, ValueError) as error:
            raise ReferenceCheckpointError(f"{self.name}: its imagen_params do not make a cascade config ({error})") \
                from None

    def ema_unets(self) -> dict[int, dict[str, torch.Tensor]]:
        """Each unet's EMA weights (``<i>.ema_model.<key>`` of the EMA ModuleList), by 0-based index."""
        out: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in (self.ema or {}).items():
            index, _, rest = key.partition(".")
            if index.isdigit() and rest.startswith("ema_model."):
                out.setdefault(int(index), {})[rest[len("ema_model."):]] = value
        return out

    def ema_counters(self) -> dict[int, dict[str, Any]]:
        """Each unet's EMA ``step`` and ``initted`` counters, by 0-based index."""
        out: dict[int, dict[str, Any]] = {}
        for key, value in (self.ema or {}).items():
            index, _, rest = key.partition(".")
            if index.isdigit() and rest in ("step", "initted"):
                item = int(value.item()) if rest == "step" else bool(value.item())
                out.setdefault(int(index), {})[rest] = item
        return out

    def cascade_weights(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """The cascade state dict: the online weights, or with ``ema`` each unet's EMA weights where
        the checkpoint has them (online weights elsewhere)."""
        weights = dict(self.model)
        if ema:
            for index, unet in self.ema_unets().items():
                weights.update({f"unets.{index}.{key}": value for key, value in unet.items()})
        return weights


def read_reference_checkpoint(source, fs=None) -> ReferenceCheckpoint:
    """Reads an imagen-pytorch checkpoint from a path (on the fsspec filesystem ``fs`` when given),
    raw bytes or a binary file object, with ``torch.load(weights_only=True)`` only."""
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "the checkpoint"
    elif hasattr(source, "read"):
        data, name = source.read(), getattr(source, "name", "the checkpoint")
    elif fs is not None:
        name = os.fspath(source)
        with fs.open(name, "rb") as handle:
            data = handle.read()
    else:
        name = os.fspath(source)
        with open(name, "rb") as handle:
            data = handle.read()
    if not is_torch_save(data[:9]):
        raise ReferenceCheckpointError(f"{name} is not a torch.save file (it starts with {data[:4]!r})")
    return ReferenceCheckpoint(_torch_load(data, str(name)), str(name))


def _load_strict(cascade, weights: dict[str, torch.Tensor], name: str) -> None:
    misfit = weights_misfit(cascade, weights)
    if misfit:
        raise ReferenceCheckpointError(f"the weights in {name} do not fit the cascade ({misfit})")
    cascade.load_state_dict(weights, strict=True)


def imagen_from_reference_checkpoint(
    source, *, load_weights: bool = True, load_ema_if_available: bool = False, config: CascadeConfig | None = None,
    fs=None,
):
    """The cascade of an imagen-pytorch checkpoint, as the reference's ``load_imagen_from_checkpoint``:
    built from its ``imagen_params`` (or ``config``), with the trained weights, or each unet's EMA
    weights with ``load_ema_if_available`` where the checkpoint has them; untouched fresh weights
    with ``load_weights=False``. ``source`` is a path, bytes, a file object or a
    :class:`ReferenceCheckpoint`."""
    ref = source if isinstance(source, ReferenceCheckpoint) else read_reference_checkpoint(source, fs=fs)
    cascade = (config or ref.config()).create()
    if load_weights:
        _load_strict(cascade, ref.cascade_weights(ema=load_ema_if_available), ref.name)
    return cascade
