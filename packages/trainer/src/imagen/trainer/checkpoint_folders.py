"""Per-stage checkpoint folders: each stage in its own files, the training state sharded (DCP).

A checkpoint folder (``ImagenTrainer(checkpoint_layout="folder")``, ``save(path, layout="folder")``)::

    checkpoint.<steps>/
      trainer.safetensors     the shared part: cascade config, the cascade's own (non-U-Net) tensors,
                              run settings, data position, extra values, and the manifest (below)
      unet.<n>.safetensors    stage n: its U-Net weights (``weights.*``), EMA weights (``ema.*``),
                              step counters, EMA counters, LR schedule and loss-scaler state
      unet.<n>.optim/         stage n's optimizer state, a torch.distributed.checkpoint folder
      generators/             every rank's generators (``<name>.<rank>``), a DCP folder
      config.json             the inference export, a ``save_pretrained`` folder: the cascade
      model.safetensors       through its EMA weights (online weights without EMA)

``load_imagen_from_checkpoint(folder)``, ``Cascade.from_pretrained(folder)`` and ``cascade-cli
sample --model folder`` read the export only (config.json + model.safetensors), never the
optimizer or the online weights.

Saving: the main rank creates the folder under a partial name (``.checkpoint.<steps>.partial-
<pid>-<hex>``) and broadcasts it; the safetensors parts are dealt round-robin over the ranks
(each rank writes its own files), the DCP parts are written by every rank (its own shards); the
digests of everything are gathered to the main rank, which writes ``trainer.safetensors`` (a
container of :mod:`imagen.cascade.container`, digest-checked itself) with the manifest, fsyncs
and renames the folder into place. A kill at any moment leaves the previous checkpoint and at
most a partial folder, which pruning and start-up remove. Loading checks every part against the
manifest (safetensors parts by their own digests and the one recorded in the manifest, DCP files
by SHA-256) before reading them. Local filesystems only (a shared one across nodes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from imagen.cascade import (
    CheckpointError,
    encode_container,
    fsync_folder,
    imagen_from_config_json,
    parse_checkpoint_json,
    partial_name,
    read_container,
    replace_folder,
)

from . import fsdp, sharded_state
from .checkpoints import Checkpoint
from .optim import optimizer_state_from_tensors, optimizer_state_to_tensors
from .stage import any_process
from .state import COUNTERS, unet_prefixes

__all__ = [
    "PARTS_FORMAT", "STAGE_FORMAT", "FolderCheckpoint", "check_replaceable", "is_checkpoint_folder",
    "load_sharded_training", "optim_folder", "read_checkpoint_folder", "save_checkpoint_folder", "stage_file",
    "write_part",
]

logger = logging.getLogger(__name__)

PARTS_FORMAT, PARTS_VERSION = "imagen-checkpoint-folder", 1
"""``format`` of a checkpoint folder's shared part, ``trainer.safetensors``."""
STAGE_FORMAT, STAGE_VERSION = "imagen-stage", 1
"""``format`` of a stage's part, ``unet.<n>.safetensors``."""
SHARED_FILE = "trainer.safetensors"
GENERATORS = "generators"


def stage_file(number: int) -> str:
    return f"unet.{number}.safetensors"


def optim_folder(number: int) -> str:
    return f"unet.{number}.optim"


def is_checkpoint_folder(path) -> bool:
    """Whether ``path`` is a folder checkpoint (a folder holding ``trainer.safetensors``)."""
    return Path(path).is_dir() and (Path(path) / SHARED_FILE).is_file()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_part(path: Path, tensors, fmt: str, version: int, metadata: dict) -> str:
    """Writes a container to ``path`` (inside the partial folder) and returns its tensors' digest."""
    data = encode_container(tensors, format=fmt, version=version, metadata=metadata)
    _write_synced(path, data)
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len])["__metadata__"]["tensors_sha256"]


def _gathered(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole and moved to the CPU at once (so that a save never holds a
    whole stage on the accelerator); any other tensor as it is."""
    return fsdp.full_tensor(tensor).cpu() if fsdp.is_dtensor(tensor) else tensor


def _stage_part(imagen, stage, accelerator, prefix: str) -> tuple[dict, dict]:
    """Tensors and JSON state of one stage's file; a sharded stage's tensors are gathered (every
    rank calls this for every stage, in the same order)."""
    tensors = {f"weights.{k}": _gathered(v) for k, v in stage.unwrapped_unet(accelerator).state_dict().items()}
    state = {name: int(getattr(stage, name)) for name in COUNTERS}
    state.update(unet_number=stage.unet_number, prefix=prefix, scheduler=stage.scheduler.state_dict(),
                 scaler=stage.scaler.state_dict())
    if stage.ema is not None:
        tensors.update({f"ema.{k}": _gathered(v) for k, v in stage.ema.ema_model.state_dict().items()})
        state["ema"] = {"step": int(stage.ema.step.item()), "initted": bool(stage.ema.initted.item())}
    return tensors, state


def _export(imagen, stages, folder: Path, parts: dict, prefixes: dict) -> None:
    """The inference export: the cascade through each stage's EMA weights, as save_pretrained writes
    it. With a sharded stage, a fresh cascade gets the gathered weights of ``parts``."""
    from .sampling import ema_weights

    if not any(fsdp.is_sharded(stage.unet) for stage in stages.values()):
        emas = {i: stage.ema for i, stage in stages.items() if stage.ema is not None}
        with ema_weights(imagen.unets, emas):
            imagen.save_pretrained(folder)
        return
    weights = {k: v for k, v in imagen.state_dict().items() if not any(k.startswith(prefixes[i]) for i in stages)}
    for index, (tensors, _) in parts.items():
        kind = "ema." if any(k.startswith("ema.") for k in tensors) else "weights."
        weights.update({prefixes[index] + k[len(kind):]: v for k, v in tensors.items() if k.startswith(kind)})
    try:  # built on the meta device (nothing initialised), then given the gathered tensors
        with torch.device("meta"):
            cascade = imagen_from_config_json(imagen.config.to_json())
        cascade.load_state_dict(weights, strict=True, assign=True)
    except (RuntimeError, NotImplementedError):  # a layer that cannot be built on meta: build it for real
        cascade = imagen_from_config_json(imagen.config.to_json())
        cascade.load_state_dict(weights, strict=True)
    cascade.save_pretrained(folder)


def check_replaceable(path: Path) -> None:
    """Refuses to put a checkpoint folder where a file, or a folder that is not a checkpoint
    folder, is (the old folder is replaced whole, its contents deleted)."""
    if path.exists() and not is_checkpoint_folder(path):
        if path.is_dir() and not any(path.iterdir()):
            return
        kind = "a folder that is not a checkpoint folder" if path.is_dir() else "a file"
        raise ValueError(f"{path} is {kind}; a checkpoint folder replaces what is at its path whole, so give a new "
                         "path, an empty folder, or an earlier checkpoint folder")


def _together(accelerator, error: BaseException | None, path: Path) -> None:
    """Raises on every process when any process failed (one all-reduce): its own error where it
    had one, else an ``OSError`` naming ``path``. No process is left waiting for another."""
    if any_process(accelerator, error is not None):
        if error is not None:
            raise error
        raise OSError(f"another process could not write its part of {path} (see its log); nothing was replaced")


def save_checkpoint_folder(path, *, imagen, stages: dict, accelerator, generators: dict, meta: dict,
                           data: dict, user: dict | None = None, training: bool = True) -> Path | None:
    """Writes a checkpoint folder at ``path`` (every process calls it; see the module docstring) and
    returns ``path`` on the main process (None on the others). Without ``training`` the optimizer
    and generator parts are left out (a weights-only checkpoint). A failure on any process (a full
    disk) raises on every process, and the previous checkpoint stays."""
    from accelerate.utils import broadcast_object_list, gather_object

    path = Path(path)
    check_replaceable(path)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    staging = [None]
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = [str(path.parent / partial_name(path.name))]
        Path(staging[0]).mkdir()
    if world > 1:
        broadcast_object_list(staging)
    staging = Path(staging[0])
    prefixes = unet_prefixes(imagen)
    try:
        stage_parts = {index: _stage_part(imagen, stage, accelerator, prefixes[index])
                       for index, stage in stages.items()}  # a collective for sharded stages
        digests, error = {}, None
        try:
            digests = _write_own_files(staging, imagen, stages, stage_parts, prefixes, rank, world)
        except Exception as caught:  # re-raised below, on every process
            error = caught
        _together(accelerator, error, path)
        parts = {}
        if training:  # DCP: a collective that raises on every rank when one fails
            for stage in stages.values():
                opt_tensors, document = optimizer_state_to_tensors(stage.optimizer, "")
                name = optim_folder(stage.unet_number)
                parts[name] = {"document": document,
                               "files": sharded_state.save_part(staging / name, opt_tensors, rank=rank, main=main)}
            own = {f"{name}.{rank}": g.get_state() for name, g in generators.items()}
            parts[GENERATORS] = {"files": sharded_state.save_part(staging / GENERATORS, own, rank=rank, main=main)}
        gathered = gather_object([(digests, parts)]) if world > 1 else [(digests, parts)]
        error = None
        if main:
            try:
                _commit(staging, path, imagen, stages, prefixes, gathered, meta=meta, data=data, user=user)
            except Exception as caught:  # re-raised below, on every process
                error = caught
        _together(accelerator, error, path)
    except BaseException:
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return path if main else None


def _write_own_files(staging: Path, imagen, stages, stage_parts, prefixes, rank: int, world: int) -> dict:
    """Writes this process's share of the safetensors parts (dealt round-robin: stage files first,
    then the export); returns ``{stage file: tensors digest}`` of the stage files it wrote."""
    digests = {}
    jobs = [(stage_file(stage.unet_number), index) for index, stage in stages.items()] + [("model", None)]
    for position, (name, index) in enumerate(jobs):
        if position % world != rank:
            continue
        if index is None:
            _export(imagen, stages, staging / "export", stage_parts, prefixes)
            for file in ("config.json", "model.safetensors"):
                os.replace(staging / "export" / file, staging / file)
            (staging / "export").rmdir()
            continue
        tensors, state = stage_parts[index]
        metadata = {"stage_state": json.dumps(state, allow_nan=True)}
        digests[name] = write_part(staging / name, tensors, STAGE_FORMAT, STAGE_VERSION, metadata)
    return digests


def _commit(staging: Path, path: Path, imagen, stages, prefixes, gathered, *, meta, data, user) -> None:
    """The main process: the manifest of every process's parts into ``trainer.safetensors``, the
    folders fsync'd, and the staging folder renamed into place."""
    manifest = {"stages": {}, "parts": {}}
    for rank_digests, rank_parts in gathered:
        manifest["stages"].update(rank_digests)
        for name, part in rank_parts.items():
            entry = manifest["parts"].setdefault(name, {"files": {}})
            entry["files"].update(part["files"])
            if "document" in part:
                entry["document"] = part["document"]
    staged = [prefixes[index] for index in stages]  # NullUnet stages (no stage file) stay in the shared part
    own_tensors = {f"imagen.{k}": v for k, v in imagen.state_dict().items() if not any(k.startswith(p) for p in staged)}
    state = {**meta, "data": dict(data), "manifest": manifest,
             "export": "ema" if any(s.ema is not None for s in stages.values()) else "online"}
    if user:
        state["user"] = user
    metadata = {"imagen_config": imagen.config.to_json(), "trainer_state": json.dumps(state, allow_nan=True)}
    write_part(staging / SHARED_FILE, own_tensors, PARTS_FORMAT, PARTS_VERSION, metadata)
    for folder in [staging, *(staging / name for name in manifest["parts"])]:
        fsync_folder(folder)
    replace_folder(staging, path)


class FolderCheckpoint(Checkpoint):
    """A verified checkpoint folder in the layout of one checkpoint file: ``tensors`` holds
    ``imagen.*`` and ``ema_imagen.*`` (assembled from the stage files), ``trainer_state`` the
    counters, EMA, schedule and scaler state per stage; the optimizer and generator states stay
    on disk until :func:`load_sharded_training` reads them. ``folder`` is its path."""

    def __init__(self, folder: Path, tensors, metadata, stage_states: dict[int, dict]):
        super().__init__(tensors, metadata, folder)
        self.folder = folder
        self.stage_states = stage_states
        state = self.trainer_state
        numbers = sorted(stage_states)
        count = max(numbers, default=0)
        for name in COUNTERS:
            state[name] = [stage_states.get(n, {}).get(name, 0) for n in range(1, count + 1)]
        state["ema"] = {str(n - 1): s["ema"] for n, s in stage_states.items() if "ema" in s}
        state["schedulers"] = {str(n - 1): s["scheduler"] for n, s in stage_states.items()}
        state["scalers"] = {str(n - 1): s["scaler"] for n, s in stage_states.items()}
        self.manifest = state.pop("manifest")


def read_stage_part(folder: Path, number: int, expected_digest: str | None):
    """The verified container of stage ``number``'s file, checked against the manifest's digest."""
    container = read_container(folder / stage_file(number), formats={STAGE_FORMAT: STAGE_VERSION})
    if expected_digest is None or container.metadata["tensors_sha256"] != expected_digest:
        raise CheckpointError(f"{container.path} is not the stage file this checkpoint's manifest lists (its digest "
                              "differs): the folder mixes files of different saves")
    return container


def read_shared_part(folder: Path):
    return read_container(Path(folder) / SHARED_FILE, formats={PARTS_FORMAT: PARTS_VERSION})


def read_checkpoint_folder(folder) -> FolderCheckpoint:
    """Reads and verifies a checkpoint folder's shared part and every stage file (not the optimizer
    or generator parts). Raises :class:`CheckpointError` naming the file at fault."""
    folder = Path(folder)
    shared = read_shared_part(folder)
    state = parse_checkpoint_json(shared.metadata.get("trainer_state", "{}"), f"{shared.path} (trainer_state)")
    manifest = state.get("manifest") if isinstance(state, dict) else None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), dict):
        raise CheckpointError(f"{shared.path} has no manifest of its parts")
    tensors = dict(shared.tensors)
    stage_states = {}
    for name, digest in sorted(manifest["stages"].items()):
        number = int(name.split(".")[1])
        container = read_stage_part(folder, number, digest)
        stage_state = parse_checkpoint_json(container.metadata.get("stage_state", "{}"),
                                            f"{container.path} (stage_state)")
        prefix = stage_state["prefix"]
        for key, value in container.tensors.items():
            kind, _, rest = key.partition(".")
            tensors[("imagen." if kind == "weights" else "ema_imagen.") + prefix + rest] = value
        stage_states[number] = stage_state
    if any(k.startswith("ema_imagen.") for k in tensors):  # the rest of the EMA cascade: the cascade's own
        tensors.update({"ema_" + k: v for k, v in list(tensors.items())
                        if k.startswith("imagen.") and "ema_" + k not in tensors})
    return FolderCheckpoint(folder, tensors, shared.metadata, stage_states)


def load_sharded_training(ckpt: FolderCheckpoint, stages: dict, generators: dict, accelerator) -> None:
    """Loads each stage's optimizer state and this rank's generators from the folder's DCP parts
    (every process calls it), after checking them against the manifest."""
    rank, world = accelerator.process_index, accelerator.num_processes
    parts = ckpt.manifest.get("parts", {})
    for index in sorted(stages):
        stage = stages[index]
        name = optim_folder(stage.unet_number)
        if name not in parts:
            continue
        folder = ckpt.folder / name
        sharded_state.verify_part(folder, parts[name]["files"], rank=rank, world=world, accelerator=accelerator)
        params = list(stage.unet.parameters())
        template = {}
        for key, (shape, dtype) in sharded_state.saved_shapes(folder).items():
            param = params[int(key.split(".", 1)[0])]
            like_param = tuple(param.shape) == shape and param.dtype == dtype
            template[key] = torch.zeros_like(param) if like_param else torch.zeros(shape, dtype=dtype)
        loaded = sharded_state.load_part(folder, template)
        stage.optimizer.load_state_dict(optimizer_state_from_tensors(parts[name]["document"], loaded, ""))
    if GENERATORS not in parts:
        return
    folder = ckpt.folder / GENERATORS
    sharded_state.verify_part(folder, parts[GENERATORS]["files"], rank=rank, world=world, accelerator=accelerator)
    saved = sharded_state.saved_shapes(folder)
    template = {f"{name}.{rank}": torch.zeros(saved[f"{name}.{rank}"][0], dtype=torch.uint8)
                for name in generators if f"{name}.{rank}" in saved}
    loaded = sharded_state.load_part(folder, template)  # a collective: every rank, even with nothing of its own
    for name, generator in generators.items():
        if f"{name}.{rank}" in loaded:
            generator.set_state(loaded[f"{name}.{rank}"])
