"""One cascade from stages trained in separate runs (``cascade-cli merge``).

Train the base stage on one machine and a super-resolution stage on another (each run a full
cascade checkpoint in which one stage moved), then merge: every stage's weights, EMA, step counts
and optimizer state come from the run that trained it. The runs must be of one cascade (equal
configs but for sampling settings, :data:`~imagen.trainer.trainer.SAMPLING_ONLY_SETTINGS`).
The merged file is an ordinary checkpoint: it samples, and training a stage resumes from it (with
a fresh data order and fresh generators: those stay in each run's own checkpoints).

Per-stage checkpoint folders (``checkpoint_layout="folder"``) merge into a folder: each stage's
``unet.<n>.safetensors`` and ``unet.<n>.optim/`` are copied from the run that trained it (checked
against that run's manifest first), the shared part and the inference export are written anew.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from imagen.cascade import fsync_folder, imagen_from_config_json, partial_name, replace_folder

from . import checkpoint_folders as folders
from . import sharded_state
from .checkpoints import Checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from .trainer import SAMPLING_ONLY_SETTINGS, config_differences

__all__ = ["merge_stage_checkpoints"]

logger = logging.getLogger(__name__)

_PER_STAGE_STATE = ("optimizers", "schedulers", "scalers", "ema")
_COUNTERS = ("steps", "nonfinite_steps", "consecutive_nonfinite")


def merge_stage_checkpoints(output: str | os.PathLike, sources: Sequence[str | os.PathLike], *,
                            stages: Mapping[int, str | os.PathLike] | None = None) -> dict[int, str]:
    """Writes to ``output`` the cascade whose stage i is taken from the source that trained it.

    ``sources`` are checkpoint files, per-stage checkpoint folders, or folders of checkpoints (their
    newest). Per-stage folders merge into a per-stage folder at ``output``; files into a file
    (the two layouts do not mix). Stage i comes from
    the one source with steps on it; ``stages`` ({unet_number: source}) chooses where several did,
    and a stage no source trained keeps the first source's weights. Returns {unet_number: file}.
    Raises ValueError naming the files when the sources are not of one cascade or a choice is
    ambiguous.
    """
    if not sources:
        raise ValueError("sources: give at least one checkpoint (file or folder) to merge")
    files = [_checkpoint_file(source) for source in sources]
    kinds = {folders.is_checkpoint_folder(file) for file in files}
    if len(kinds) > 1:
        raise ValueError(f"sources {[str(f) for f in files]} mix checkpoint files and per-stage checkpoint folders; "
                         "merge sources of one layout")
    as_folders = kinds == {True}
    loaded = {file: folders.read_checkpoint_folder(file) if as_folders else load_checkpoint(file) for file in files}
    configs = {file: _config_of(file, ckpt) for file, ckpt in loaded.items()}
    first = files[0]
    for file in files[1:]:
        refused = [k for k in config_differences(configs[first], configs[file]) if k not in SAMPLING_ONLY_SETTINGS]
        if refused:
            details = "; ".join(_difference(k, configs[first].get(k), configs[file].get(k)) for k in refused[:4])
            raise ValueError(f"{file} is not a run of the cascade of {first} ({details}); only sampling settings "
                             "may differ")
    chosen = _choose_sources(files, loaded, len(configs[first]["unets"]), stages or {})
    if as_folders:
        _merge_folders(Path(output), loaded, chosen)
        logger.info("merged %s into %s", {n: str(f) for n, f in chosen.items()}, output)
        return {number: str(file) for number, file in chosen.items()}
    tensors, state = _merged(loaded, chosen)
    save_checkpoint(output, tensors, imagen_config=loaded[first].imagen_config, trainer_state=state)
    logger.info("merged %s into %s", {n: str(f) for n, f in chosen.items()}, output)
    return {number: str(file) for number, file in chosen.items()}


def _difference(key: str, a, b) -> str:
    """``key: a vs b``; for the list of unet configs, only the keywords that differ, per unet."""
    if key == "unets" and isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        parts = [f"unets[{i}].{name}: {x.get(name)!r} vs {y.get(name)!r}"
                 for i, (x, y) in enumerate(zip(a, b)) if isinstance(x, dict) and isinstance(y, dict)
                 for name in sorted(set(x) | set(y)) if x.get(name) != y.get(name)]
        if parts:
            return "; ".join(parts[:4])
    return f"{key}: {a!r} vs {b!r}"


def _checkpoint_file(source) -> Path:
    path = Path(source)
    if folders.is_checkpoint_folder(path):
        return path
    if path.is_dir():
        newest = latest_checkpoint(path)
        if newest is None:
            raise ValueError(f"{path} holds no checkpoints (checkpoint.<steps>.safetensors or checkpoint.<steps>/)")
        return Path(newest)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def _config_of(file: Path, ckpt: Checkpoint) -> dict:
    if ckpt.imagen_config is None:
        raise ValueError(f"{file} carries no cascade config; only checkpoints written by ImagenTrainer merge")
    config = json.loads(ckpt.imagen_config)
    if not isinstance(config.get("unets"), list):
        raise ValueError(f"{file}: its cascade config has no list of unets")
    return config


def _steps(ckpt: Checkpoint, index: int, counter: str = "steps") -> int:
    values = ckpt.trainer_state.get(counter, [])
    return int(values[index]) if index < len(values) else 0


def _choose_sources(files: list[Path], loaded: dict, num_unets: int, stages: Mapping) -> dict[int, Path]:
    """{unet_number: file} for every stage."""
    for number in stages:
        if not isinstance(number, int) or not 1 <= number <= num_unets:
            raise ValueError(f"stages: unet number {number!r} is not in 1..{num_unets}")
    chosen = {}
    for index in range(num_unets):
        number = index + 1
        if number in stages:
            file = _checkpoint_file(stages[number])
            if file not in loaded:
                raise ValueError(f"stages: {file} for unet {number} is not one of the sources "
                                 f"{[str(f) for f in files]}")
            chosen[number] = file
            continue
        trained = [file for file in files if _steps(loaded[file], index) > 0]
        if len(trained) > 1:
            counts = ", ".join(f"{file} ({_steps(loaded[file], index)} steps)" for file in trained)
            raise ValueError(f"unet {number} was trained in several sources: {counts}; choose one "
                             f"(stages={{{number}: ...}}, or --stage {number}=PATH)")
        chosen[number] = trained[0] if trained else files[0]
    return chosen


def _stage_of(key: str) -> int | None:
    """The stage index of a U-Net tensor key (``imagen.unets.2.…``, ``ema_imagen.unets.2.…``,
    ``optim.2.…``), None for the cascade's other tensors."""
    head, _, rest = key.partition(".")
    if head in ("imagen", "ema_imagen") and rest.startswith("unets."):
        return int(rest.split(".")[1])
    if head == "optim":
        return int(rest.split(".")[0])
    return None


def _merged(loaded: dict, chosen: dict[int, Path]) -> tuple[dict[str, torch.Tensor], dict]:
    """The merged tensors and trainer state (no generator or data state)."""
    first = next(iter(loaded))
    tensors = {}
    for key, value in loaded[first].tensors.items():  # the cascade's own tensors (not a U-Net's)
        if _stage_of(key) is None and not key.startswith(("rng.", "ema_imagen.")):
            tensors[key] = value
    has_ema = any(any(k.startswith("ema_imagen.") for k in ckpt.tensors) for ckpt in loaded.values())
    if has_ema:
        tensors.update({"ema_" + k: v for k, v in tensors.items() if k.startswith("imagen.")})
    state = {**{name: [] for name in _COUNTERS}, **{name: {} for name in _PER_STAGE_STATE}}
    for number, file in chosen.items():
        index, ckpt = number - 1, loaded[file]
        own = {k: v for k, v in ckpt.tensors.items() if _stage_of(k) == index}
        if has_ema and not any(k.startswith("ema_imagen.") for k in own):  # no EMA kept: its weights are its EMA
            own.update({"ema_" + k: v for k, v in own.items() if k.startswith("imagen.")})
        tensors.update(own)
        for counter in _COUNTERS:
            state[counter].append(_steps(ckpt, index, counter))
        for name in _PER_STAGE_STATE:
            document = ckpt.trainer_state.get(name, {})
            if str(index) in document:
                state[name][str(index)] = document[str(index)]
    state["merged_from"] = {str(number): str(file) for number, file in chosen.items()}
    return tensors, state


def _merge_folders(output: Path, loaded: dict[Path, folders.FolderCheckpoint], chosen: dict[int, Path]) -> Path:
    """Writes at ``output`` the per-stage folder whose stage n comes from ``chosen[n]`` (a key of
    ``loaded``, the verified source folders): its stage file and optimizer part copied (checked
    against the source's manifest), a new shared part (the first source's config and own tensors,
    no generators or data position) and a new export. Atomic as a folder, like a save."""
    folders.check_replaceable(output)
    first = next(iter(loaded))
    base = loaded[first]
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / partial_name(output.name)
    staging.mkdir()
    try:
        manifest = {"stages": {}, "parts": {}}
        export = {k: v for k, v in base.tensors.items() if k.startswith("imagen.") and not _is_unet_key(base, k)}
        has_ema = any(k.startswith("ema_imagen.") for ckpt in loaded.values() for k in ckpt.tensors)
        for number, source in sorted(chosen.items()):
            ckpt = loaded[source]
            name = folders.stage_file(number)
            shutil.copyfile(source / name, staging / name)
            manifest["stages"][name] = ckpt.manifest["stages"][name]
            part = ckpt.manifest.get("parts", {}).get(folders.optim_folder(number))
            if part is not None:
                sharded_state.verify_part(source / folders.optim_folder(number), part["files"], rank=0, world=1)
                shutil.copytree(source / folders.optim_folder(number), staging / folders.optim_folder(number))
                manifest["parts"][folders.optim_folder(number)] = part
            prefix = "imagen." + ckpt.stage_states[number]["prefix"]
            ema_prefix = "ema_" + prefix if has_ema and any(k.startswith("ema_" + prefix) for k in ckpt.tensors) \
                else prefix
            export.update({prefix + k[len(ema_prefix):]: v for k, v in ckpt.tensors.items()
                           if k.startswith(ema_prefix)})
        cascade = imagen_from_config_json(base.imagen_config)
        cascade.load_state_dict({k[len("imagen."):]: v for k, v in export.items()}, strict=True)
        cascade.save_pretrained(staging / "export")
        for file in ("config.json", "model.safetensors"):
            os.replace(staging / "export" / file, staging / file)
        (staging / "export").rmdir()
        state = {key: base.trainer_state[key] for key in ("seed", "precision") if key in base.trainer_state}
        state.update(manifest=manifest, export="ema" if has_ema else "online",
                     merged_from={str(n): str(f) for n, f in chosen.items()})
        own = {k: v for k, v in base.tensors.items() if k.startswith("imagen.") and not _is_unet_key(base, k)}
        metadata = {"imagen_config": base.imagen_config, "trainer_state": json.dumps(state, allow_nan=True)}
        folders.write_part(staging / folders.SHARED_FILE, own, folders.PARTS_FORMAT, folders.PARTS_VERSION, metadata)
        for folder in [staging, *(staging / name for name in manifest["parts"])]:
            fsync_folder(folder)
        replace_folder(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _is_unet_key(ckpt: folders.FolderCheckpoint, key: str) -> bool:
    return any(key.startswith("imagen." + s["prefix"]) for s in ckpt.stage_states.values())
