"""Fault-injection machinery shared by ``faults/`` (``nox -s faults``) and the short versions in the
normal suites (``packages/trainer/tests/test_faults_short.py``).

- :func:`tiny_imagen`, :func:`artifacts`: a tiny unconditional cascade and one file of every kind
  a loader reads (a trainer checkpoint, a ``save_pretrained`` folder, an imagen-pytorch ``.pt``);
- :func:`safetensors_mutations`, :func:`json_mutations`, :func:`torch_save_mutations`: damaged
  copies of such files, each with a label saying what was done to it;
- :func:`check_loader`: runs one loader on one damaged file and says whether it behaved
  (refused with a ``CheckpointError`` naming the file, or loaded exactly the original);
- :func:`kill_loop`: trains in a subprocess with a checkpoint every step and SIGKILLs it at random
  times, most of them aimed inside a save, checking the folder after each kill.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from imagen.cascade import (
    CheckpointError,
    Imagen,
    ImagenConfig,
)
from imagen.cascade.container import encode_container, is_partial_name

HERE = Path(__file__).resolve().parent
KILL_WORKER = HERE / "kill_worker.py"
DEEP = 100_000  # nesting depth of the "deeply nested JSON" inputs

UNET = dict(dim=8, dim_mults=[1, 2], num_resnet_blocks=1, layer_attns=False, layer_cross_attns=False,
            attn_heads=2, attn_dim_head=8)


def tiny_config() -> ImagenConfig:
    return ImagenConfig(unets=[UNET], image_sizes=[8], timesteps=5, condition_on_text=False)


def tiny_imagen(seed: int = 0) -> Imagen:
    """A tiny unconditional one-stage cascade with random (non-zero) weights everywhere."""
    imagen = tiny_config().create()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in imagen.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=g) * 0.05)
    return imagen


# ----------------------------------------------------------------------------- artifacts


@dataclass
class Artifacts:
    checkpoint: Path  # ImagenTrainer.save
    pretrained: Path  # save_pretrained folder
    reference: Path  # imagen-pytorch layout, torch.save
    trainer: object  # an ImagenTrainer of the same cascade (for trainer.load)


def artifacts(folder: Path) -> Artifacts:
    from imagen.trainer import ImagenTrainer

    folder.mkdir(parents=True, exist_ok=True)
    imagen = tiny_imagen()
    trainer = ImagenTrainer(imagen, verbose=False, warmup_steps=1)
    trainer(torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), unet_number=1)
    trainer.update(1)
    checkpoint = trainer.save(folder / "checkpoint.1.safetensors")
    imagen.save_pretrained(folder / "pretrained")
    reference = folder / "reference.pt"
    params = {"unets": [UNET], "image_sizes": [8], "timesteps": 5, "condition_on_text": False}
    torch.save({"model": dict(imagen.state_dict()), "steps": torch.tensor([1]), "version": "2.1.0",
                "imagen_type": "original", "imagen_params": params}, reference)
    return Artifacts(Path(checkpoint), folder / "pretrained", reference, trainer)


# ----------------------------------------------------------------------------- mutations


class Evil:
    """A pickle payload: unpickling it creates ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _reencoded(data: bytes, **metadata_changes) -> bytes:
    """The same tensors in a fresh, fully consistent container (digests recomputed) whose metadata
    has ``metadata_changes`` applied: reaches the parsing of metadata entries past every digest."""
    from safetensors.torch import load

    header, _ = _split(data)
    metadata = dict(header["__metadata__"])
    kind, version = metadata.pop("format"), int(metadata.pop("format_version"))
    metadata.pop("tensors_sha256", None), metadata.pop("metadata_sha256", None)
    metadata.update(metadata_changes)
    return encode_container(load(data), format=kind, version=version, metadata=metadata)


def _nested(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def safetensors_mutations(data: bytes, rng: random.Random, *, flips: int = 8, marker: str | None = None):
    """``(label, bytes)`` damaged versions of the container ``data``."""
    header, body = _split(data)
    (header_len,) = struct.unpack("<Q", data[:8])
    end = 8 + header_len
    out = []
    for cut in sorted({0, 1, 7, 8, 9, end // 2, end - 1, end, end + 1, (end + len(data)) // 2, len(data) - 1}):
        out.append((f"truncated to {cut} bytes", data[:cut]))
    out.append(("one byte appended", data + b"\0"))
    for region, low, high in (("header", 8, end), ("data", end, len(data))):
        for _ in range(flips):
            i = rng.randrange(low, high)
            mask = 1 << rng.randrange(8)
            out.append((f"{region} byte {i} flipped (^{mask})", data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]))
    out.append(("header length + 1", struct.pack("<Q", header_len + 1) + data[8:]))
    out.append(("header length - 8", struct.pack("<Q", header_len - 8) + data[8:]))
    out.append(("header length 2**63", struct.pack("<Q", 2**63) + data[8:]))
    names = sorted(k for k in header if k != "__metadata__")
    big = max(names, key=lambda k: header[k]["data_offsets"][1] - header[k]["data_offsets"][0])
    lies = {
        "end offset + 4": lambda h: h[big]["data_offsets"].__setitem__(1, h[big]["data_offsets"][1] + 4),
        "start offset + 4": lambda h: h[big]["data_offsets"].__setitem__(0, h[big]["data_offsets"][0] + 4),
        "offsets past the file": lambda h: h[big].__setitem__("data_offsets", [len(data), len(data) + 4]),
        "negative offset": lambda h: h[big]["data_offsets"].__setitem__(0, -4),
        "shape doubled": lambda h: h[big]["shape"].__setitem__(0, h[big]["shape"][0] * 2),
        "shape negative": lambda h: h[big]["shape"].__setitem__(0, -1),
        "dtype F32 -> I32 (same size)": lambda h: h[big].__setitem__("dtype", "I32"),
        "dtype unknown": lambda h: h[big].__setitem__("dtype", "Q128"),
        "two tensors swap offsets": lambda h: _swap_offsets(h, names),
        "a tensor dropped": lambda h: h.pop(names[0]),
        "digest removed": lambda h: h["__metadata__"].pop("tensors_sha256", None),
        "metadata digest removed": lambda h: h["__metadata__"].pop("metadata_sha256", None),
        "format changed": lambda h: h["__metadata__"].__setitem__("format", "something-else"),
        "future version": lambda h: h["__metadata__"].__setitem__("format_version", "99"),
        "metadata not strings": lambda h: h.__setitem__("__metadata__", {"format": 1}),
        "entry not an object": lambda h: h.__setitem__(big, [1, 2]),
    }
    for label, lie in lies.items():
        lied = json.loads(json.dumps(header))
        lie(lied)
        out.append((f"lying header: {label}", _join(lied, body)))
    raw = data[8:end]
    out.append(("malformed JSON header", data[:8] + b"{" + b"x" * (header_len - 1)))
    out.append(("header not an object", _join_raw(b"[1,2,3]", body)))
    out.append(("header not UTF-8", data[:8] + b"{\xff\xfe" + raw[3:]))
    out.append(("duplicate tensor name", _join_raw(raw.rstrip(b" ")[:-1] + b"," + _first_entry(raw) + b"}", body)))
    out.append(("deeply nested JSON header", _join_raw(b'{"x":' + _nested().encode() + b"}", body)))
    meta = header["__metadata__"]
    for key in ("trainer_state", "imagen_config"):
        if key in meta:
            out.append((f"deeply nested {key} (valid digests)", _reencoded(data, **{key: _nested()})))
            out.append((f"malformed {key} (valid digests)", _reencoded(data, **{key: "{not json"})))
            out.append((f"{key} not an object (valid digests)", _reencoded(data, **{key: "[1]"})))
    if marker is not None:
        out.append(("raw pickle payload", pickle.dumps({"model": Evil(marker)})))
        out.append(("torch.save pickle payload", _torch_saved({"model": Evil(marker)})))
    out.append(("empty file", b""))
    return out


def _swap_offsets(header: dict, names: list[str]) -> None:
    sizes = {}
    for name in names:
        start, stop = header[name]["data_offsets"]
        sizes.setdefault((stop - start, header[name]["dtype"]), []).append(name)
    pair = next((group for group in sizes.values() if len(group) >= 2), None)
    if pair is not None:
        a, b = pair[:2]
        header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]


def _join_raw(raw: bytes, body: bytes) -> bytes:
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _first_entry(raw: bytes) -> bytes:
    header = json.loads(raw)
    name = next(k for k in header if k != "__metadata__")
    return json.dumps({name: header[name]})[1:-1].encode()


def _torch_saved(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def json_mutations(data: bytes, rng: random.Random, *, flips: int = 6):
    """``(label, bytes)`` damaged versions of a JSON document."""
    out = [(f"truncated to {cut} bytes", data[:cut]) for cut in (0, 1, len(data) // 2, len(data) - 1)]
    for _ in range(flips):
        i = rng.randrange(len(data))
        out.append((f"byte {i} flipped", data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]))
    out += [("not UTF-8", b"\xff\xfe" + data), ("a JSON list", b"[1, 2]"), ("deeply nested", _nested().encode()),
            ("config nested deeply", b'{"format": "imagen-cascade", "format_version": 1, "config": '
             + _nested().encode() + b"}"),
            ("future version", data.replace(b'"format_version": 1', b'"format_version": 99'))]
    return out


def torch_save_mutations(data: bytes, rng: random.Random, *, flips: int = 8, marker: str | None = None):
    """``(label, bytes)`` damaged versions of a ``torch.save`` file (a zip archive)."""
    out = [(f"truncated to {cut} bytes", data[:cut]) for cut in sorted({4, 30, len(data) // 2, len(data) - 22,
                                                                        len(data) - 1})]
    for _ in range(flips):
        i = rng.randrange(len(data))
        out.append((f"byte {i} flipped", data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]))
    deep: list = []
    for _ in range(3000):
        deep = [deep]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20000)  # only to write it
    try:
        nested = _torch_saved({"model": {}, "imagen_type": "original", "imagen_params": {"unets": deep}})
    finally:
        sys.setrecursionlimit(limit)
    out.append(("deeply nested imagen_params", nested))
    out.append(("model is not a dict", _torch_saved({"model": [1, 2]})))
    out.append(("no model", _torch_saved({"steps": torch.tensor([1])})))
    if marker is not None:
        out.append(("torch.save pickle payload", _torch_saved({"model": Evil(marker)})))
        out.append(("raw pickle payload", pickle.dumps({"model": Evil(marker)})))
    return out


# ----------------------------------------------------------------------------- loaders


@dataclass
class Tally:
    """Counts per loader: inputs tried, refused as they should be, loaded unchanged (a mutation
    that did not change the content, e.g. whitespace), and failures (with the first few)."""

    inputs: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    unchanged: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)

    def report(self, title: str) -> str:
        lines = [f"{title}: {sum(self.inputs.values())} inputs, {sum(self.refused.values())} refused, "
                 f"{sum(self.unchanged.values())} loaded unchanged, {len(self.failures)} failures"]
        for loader in sorted(self.inputs):
            lines.append(f"  {loader}: {self.inputs[loader]} inputs, {self.refused[loader]} refused, "
                         f"{self.unchanged[loader]} unchanged, "
                         f"{sum(1 for f in self.failures if f[0] == loader)} failures")
        lines += [f"  FAILURE {loader} on {label}: {what}" for loader, label, what in self.failures[:10]]
        return "\n".join(lines)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_loader(tally: Tally, loader: str, label: str, load, named, original, marker: Path | None = None) -> None:
    """Runs ``load()``; it must raise CheckpointError naming ``named`` (a path) or return
    something equal to ``original`` (``original(result)`` is True)."""
    tally.inputs[loader] += 1
    try:
        result = load()
    except CheckpointError as error:
        if str(named) in str(error):
            tally.refused[loader] += 1
        else:
            tally.failures.append((loader, label, f"CheckpointError not naming {named}: {error}"))
    except RecursionError as error:
        tally.failures.append((loader, label, f"RecursionError: {error}"))
    except Exception as error:
        tally.failures.append((loader, label, f"{type(error).__name__}: {str(error)[:200]}"))
    else:
        if original(result):
            tally.unchanged[loader] += 1
        else:
            tally.failures.append((loader, label, "loaded something other than the original"))
    if marker is not None and marker.exists():
        tally.failures.append((loader, label, "THE PICKLE PAYLOAD RAN"))
        marker.unlink()


def file_loaders(art: Artifacts):
    """``name -> (load(path), original(result) -> bool)`` for every loader that reads one file."""
    from imagen.cascade import imagen_from_reference_checkpoint, load_imagen_from_checkpoint
    from imagen.trainer import load_checkpoint
    from imagen.trainer.checkpoints import Checkpoint

    good = load_checkpoint(art.checkpoint)
    state = {k: v.clone() for k, v in art.trainer.imagen.state_dict().items()}

    def trainer_load(path):
        art.trainer.load(path)
        return art.trainer.imagen.state_dict()

    def same_checkpoint(result):
        return isinstance(result, Checkpoint) and _same_state(result.tensors, good.tensors) \
            and result.metadata == good.metadata

    return {
        "load_checkpoint": (load_checkpoint, same_checkpoint),
        "ImagenTrainer.load": (trainer_load, lambda r: _same_state(r, state)),
        "load_imagen_from_checkpoint": (load_imagen_from_checkpoint, lambda r: _same_state(r.state_dict(), state)),
        "imagen_from_reference_checkpoint": (imagen_from_reference_checkpoint,
                                             lambda r: _same_state(r.state_dict(), state)),
    }


def _sample(rng: random.Random, items: list, count: int | None) -> list:
    """``count`` of ``items`` drawn at random (all of them when ``count`` is None), order kept."""
    if count is None or count >= len(items):
        return items
    keep = set(rng.sample(range(len(items)), count))
    return [item for i, item in enumerate(items) if i in keep]


def mutation_suite(folder: Path, *, flips: int, seed: int = 0, per_kind: int | None = None) -> Tally:
    """Every damaged file of every kind against every loader (or ``per_kind`` of each kind's
    damaged files, drawn at random); returns the tally."""
    from imagen.cascade import load_imagen_from_checkpoint
    from imagen.cascade.persistence import load_pretrained

    rng = random.Random(seed)
    art = artifacts(folder / "originals")
    marker = folder / "PAYLOAD_RAN"
    loaders = file_loaders(art)
    tally = Tally()
    inputs = [("trainer checkpoint: " + label, data) for label, data in _sample(
        rng, safetensors_mutations(art.checkpoint.read_bytes(), rng, flips=flips, marker=str(marker)), per_kind)]
    inputs += [("reference .pt: " + label, data) for label, data in _sample(
        rng, torch_save_mutations(art.reference.read_bytes(), rng, flips=flips, marker=str(marker)), per_kind)]
    target = folder / "damaged.safetensors"
    for label, data in inputs:
        target.write_bytes(data)
        for name, (load, original) in loaders.items():
            check_loader(tally, name, label, lambda load=load: load(target), target, original, marker)
    state = {k: v.clone() for k, v in art.trainer.imagen.state_dict().items()}
    pretrained = [("model.safetensors", label, data) for label, data in
                  safetensors_mutations((art.pretrained / "model.safetensors").read_bytes(), rng, flips=flips,
                                        marker=str(marker))]
    pretrained += [("config.json", label, data) for label, data in
                   json_mutations((art.pretrained / "config.json").read_bytes(), rng, flips=flips)]
    pretrained += _consistent_config_mutations(art.pretrained)
    pretrained = _sample(rng, pretrained, per_kind)
    damaged = folder / "damaged_pretrained"
    for file, label, data in pretrained:
        _copy_folder(art.pretrained, damaged)
        if isinstance(data, dict):  # several files replaced together
            for name, content in data.items():
                (damaged / name).write_bytes(content)
        else:
            (damaged / file).write_bytes(data)
        for name, load in (("load_pretrained", load_pretrained), ("load_imagen_from_checkpoint(folder)",
                                                                   load_imagen_from_checkpoint)):
            check_loader(tally, name, f"{file}: {label}", lambda load=load: load(damaged), damaged,
                         lambda r: _same_state(r.state_dict(), state), marker)
    return tally


def _consistent_config_mutations(folder: Path):
    """config.json documents that pass the config digest (re-written with a matching weights
    container): they reach the config parser itself."""
    from safetensors.torch import load

    tensors = load((folder / "model.safetensors").read_bytes())
    out = []
    documents = {
        "deeply nested config (matching digest)": _nested().encode(),
        "config not an object (matching digest)": b"[1]",
        "unknown config keys (matching digest)": json.dumps(
            {"format": "imagen-cascade", "format_version": 1, "config": {"kind": "Imagen", "bogus": 1}}).encode(),
        "future version (matching digest)": (folder / "config.json").read_bytes().replace(
            b'"format_version": 1', b'"format_version": 99'),
    }
    import hashlib

    for label, document in documents.items():
        weights = encode_container(tensors, format="imagen-cascade", version=1,
                                   metadata={"config_sha256": hashlib.sha256(document).hexdigest()})
        out.append(("config.json + model.safetensors", label,
                    {"config.json": document, "model.safetensors": weights}))
    return out


def _copy_folder(source: Path, target: Path) -> None:
    import shutil

    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)


# ----------------------------------------------------------------------------- kill loop


@dataclass
class KillReport:
    trials: int = 0
    kills_inside_save: int = 0
    failures: list = field(default_factory=list)

    def report(self) -> str:
        lines = [f"SIGKILL loop: {self.trials} trials, {self.kills_inside_save} kills inside a save, "
                 f"{len(self.failures)} failures"]
        return "\n".join(lines + [f"  FAILURE trial {t}: {what}" for t, what in self.failures[:10]])


def _folder_state(folder: Path):
    from imagen.trainer.checkpoints import checkpoint_folder_files

    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    checkpoints = [p.name for p in checkpoint_folder_files(folder)]
    others = [n for n in names if n not in checkpoints]
    return checkpoints, others


def _steps_of(name: str) -> int:
    return int(name.split(".")[1])


def kill_loop(folder: Path, trials: int, *, seed: int = 0, keep: int = 2, timeout: float = 120.0) -> KillReport:
    """``trials`` SIGKILLs of a training process that checkpoints every step (``keep`` kept).
    After each kill: only checkpoints and partial files of our pattern are in the folder, the
    newest checkpoint loads and has no fewer steps than the newest before; the next start removes
    the partial files and resumes from that newest checkpoint."""
    from imagen.trainer import load_checkpoint

    rng = random.Random(seed)
    report = KillReport()
    newest_steps = 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    zygote = subprocess.Popen([sys.executable, str(KILL_WORKER), str(folder), str(keep)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def line() -> str:
        return zygote.stdout.readline().decode().strip()

    try:
        if line() != "zygote":
            raise RuntimeError(f"the kill worker did not start: {zygote.stderr.read().decode()[-2000:]}")
        for trial in range(trials):
            aim = rng.random() < 0.75  # most kills are aimed inside a save
            zygote.stdin.write(f"trial {rng.randrange(2**31)}\n".encode())
            zygote.stdin.flush()
            ready = line().split()
            if len(ready) != 3 or ready[0] != "ready":
                report.failures.append((trial, f"trainer did not start: {ready}"))
                break
            pid, resumed = int(ready[1]), int(ready[2])
            checkpoints, others = _folder_state(folder)
            if others:
                report.failures.append((trial, f"files left after start-up: {others}"))
            if resumed != newest_steps:
                report.failures.append((trial, f"resumed at step {resumed}, newest checkpoint had {newest_steps}"))
            saves_to_wait, events = rng.randrange(0, 3), []
            delay = rng.uniform(0.0, 0.012) if aim else rng.uniform(0.0, 0.4)
            start, deadline = time.monotonic(), time.monotonic() + timeout
            while time.monotonic() < deadline:
                event = line()
                events.append(event)
                if aim and event == "save-begin" and events.count("save-begin") > saves_to_wait:
                    time.sleep(delay)
                    break
                if not aim and event.startswith("step") and time.monotonic() - start > delay:
                    break
            os.kill(pid, signal.SIGKILL)
            while (event := line()) != f"reaped {pid}":
                if not event:
                    raise RuntimeError("the kill worker died")
                events.append(event)
            marks = [e for e in events if e in ("save-begin", "save-end")]
            if marks and marks[-1] == "save-begin":
                report.kills_inside_save += 1
            report.trials += 1
            checkpoints, others = _folder_state(folder)
            foreign = [n for n in others if not is_partial_name(n)]
            if foreign:
                report.failures.append((trial, f"files of another pattern left: {foreign}"))
            if len(checkpoints) > keep + 1:
                report.failures.append((trial, f"{len(checkpoints)} checkpoints kept (keep={keep})"))
            if checkpoints:
                newest = max(checkpoints, key=_steps_of)
                try:
                    load_checkpoint(folder / newest)
                except Exception as error:
                    report.failures.append((trial, f"newest checkpoint {newest} does not load: {error}"))
                if _steps_of(newest) < newest_steps:
                    report.failures.append((trial, f"newest checkpoint went back: {newest} < {newest_steps}"))
                newest_steps = max(newest_steps, _steps_of(newest))
    finally:
        zygote.stdin.close()
        zygote.kill()
        zygote.wait()
    return report


# ----------------------------------------------------------------------------- full and read-only disks


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with the capability, on Linux)."""
    import tempfile

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    probe = Path(tempfile.mkdtemp(prefix="imagen-faults-probe-"))
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True)
        if done.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    except OSError:
        return False
    finally:
        probe.rmdir()


class tmpfs:
    """``with tmpfs(path, size="8m"):`` a tmpfs of that size mounted on ``path`` (root only)."""

    def __init__(self, path: Path, size: str = "8m"):
        self.path, self.size = Path(path), size

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)], check=True)
        return self.path

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def __exit__(self, *exc):
        subprocess.run(["umount", "-l", str(self.path)], check=False)


def fill(folder: Path) -> int:
    """Fills the filesystem of ``folder`` with a filler file; returns the bytes written."""
    written = 0
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for block in (65536, 4096, 512, 1):
            try:
                while True:
                    written += os.write(fd, b"\0" * block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return written


@dataclass
class DiskReport:
    checks: int = 0
    failures: list = field(default_factory=list)

    def expect(self, ok: bool, what: str) -> None:
        self.checks += 1
        if not ok:
            self.failures.append(what)

    def report(self, title: str) -> str:
        return "\n".join([f"{title}: {self.checks} checks, {len(self.failures)} failures"]
                         + [f"  FAILURE {f}" for f in self.failures])


def _refused_with_os_error(report: DiskReport, what: str, call, named) -> None:
    try:
        call()
    except OSError as error:
        report.expect(str(named) in str(error), f"{what}: the OSError does not name {named}: {error}")
    except Exception as error:
        report.expect(False, f"{what}: {type(error).__name__} instead of an OSError: {error}")
    else:
        report.expect(False, f"{what}: it did not fail")


def _left_over(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if is_partial_name(p.name) or p.name.startswith(".tmp"))


def unwritable_disk_checks(root: Path, make_unwritable) -> DiskReport:
    """Writes a checkpoint folder and a save_pretrained folder under ``root``, calls
    ``make_unwritable()`` (fill the disk, or make it read-only), then checks that every writer
    fails with an OSError naming its target and leaves the previous files intact and no partial
    file; and that a trainer still starts from (and loads) the unwritable folder."""
    from imagen.cascade import load_imagen_from_checkpoint
    from imagen.trainer import ImagenTrainer, load_checkpoint, save_checkpoint

    report = DiskReport()
    checkpoints = root / "checkpoints"
    trainer = ImagenTrainer(tiny_imagen(), verbose=False, checkpoint_path=checkpoints, warmup_steps=1)
    trainer(torch.rand(2, 3, 8, 8), unet_number=1)
    trainer.update(1)
    first = trainer.save_to_checkpoint_folder()
    pretrained = root / "pretrained"
    trainer.imagen.save_pretrained(pretrained)
    saved = {k: v.clone() for k, v in trainer.imagen.state_dict().items()}
    make_unwritable()
    trainer(torch.rand(2, 3, 8, 8), unet_number=1)
    trainer.update(1)
    _refused_with_os_error(report, "ImagenTrainer.save_to_checkpoint_folder", trainer.save_to_checkpoint_folder,
                           checkpoints)
    _refused_with_os_error(report, "save_checkpoint", lambda: save_checkpoint(root / "other.safetensors",
                                                                              {"w": torch.ones(4)}), root)
    _refused_with_os_error(report, "save_pretrained", lambda: trainer.imagen.save_pretrained(pretrained), pretrained)
    report.expect(sorted(p.name for p in checkpoints.iterdir()) == [Path(first).name],
                  f"the checkpoint folder changed: {sorted(p.name for p in checkpoints.iterdir())}")
    try:
        load_checkpoint(first)
        again = load_imagen_from_checkpoint(pretrained)
        report.expect(_same_state(again.state_dict(), saved), "save_pretrained's previous folder changed")
        resumed = ImagenTrainer(tiny_imagen(), verbose=False, checkpoint_path=checkpoints, warmup_steps=1)
        report.expect(resumed.num_steps_taken() == 1, "a trainer on the unwritable folder did not resume")
    except Exception as error:
        report.expect(False, f"the previous files no longer load: {type(error).__name__}: {error}")
    for folder in (root, checkpoints):
        left = _left_over(folder)
        report.expect(not left, f"partial files left in {folder}: {left}")
    report.expect((pretrained / "config.json").is_file() and (pretrained / "model.safetensors").is_file(),
                  "save_pretrained's folder lost a file")
    return report
