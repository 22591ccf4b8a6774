"""Checkpoint files: round trip, atomic replace, torn files, pickle refusal, folder rotation."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.trainer import CheckpointError, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from imagen.trainer.checkpoints import checkpoint_folder_files, folder_checkpoint_name


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "imagen.w": torch.randn(3, 4, generator=g),
        "imagen.b": torch.randn(4, generator=g).to(torch.bfloat16),
        "optim.1.0.step": torch.tensor(3.0),
        "rng.trainer": torch.Generator().get_state(),
        "empty": torch.zeros(0),
    }


def test_round_trip(tmp_path):
    tensors = _tensors()
    path = save_checkpoint(
        tmp_path / "checkpoint.pt", tensors, imagen_config='{"a": 1}', trainer_state={"steps": [1, 2]}
    )
    ckpt = load_checkpoint(path)
    assert set(ckpt.tensors) == set(tensors)
    for k, v in tensors.items():
        assert ckpt.tensors[k].dtype == v.dtype and torch.equal(ckpt.tensors[k], v)
    assert ckpt.imagen_config == '{"a": 1}'
    assert ckpt.trainer_state == {"steps": [1, 2]}
    assert ckpt.with_prefix("imagen.").keys() == {"w", "b"}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=3), st.sampled_from([torch.float32, torch.float16, torch.int64])
)
def test_round_trip_property(tmp_path_factory, shape, dtype):
    t = (torch.arange(int(torch.tensor(shape).prod())).reshape(shape) % 7).to(dtype)
    path = save_checkpoint(tmp_path_factory.mktemp("c") / "x.safetensors", {"t": t, "view": t.reshape(-1)[:1]})
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt.tensors["t"], t) and torch.equal(ckpt.tensors["view"], t.reshape(-1)[:1])


@pytest.mark.parametrize("cut", [3, 20, -1])
def test_truncated_file_is_refused(tmp_path, cut):
    path = save_checkpoint(tmp_path / "c.pt", _tensors())
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=r"trunc|torn"):
        load_checkpoint(path)


def test_flipped_byte_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _tensors())
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2)}, str(tmp_path / "f.safetensors"))
    with pytest.raises(CheckpointError, match="not an imagen checkpoint"):
        load_checkpoint(tmp_path / "f.safetensors")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("how", ["pickle", "torch_save"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoint.pt"
    if how == "pickle":
        path.write_bytes(pickle.dumps({"model": _Evil(str(marker))}))
    else:
        torch.save({"model": _Evil(str(marker))}, path)
        assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_folder_rotation(tmp_path):
    for steps in (1, 5, 10, 3):
        save_checkpoint(tmp_path / folder_checkpoint_name(steps), {"s": torch.tensor(steps)})
    dead = 4194305  # above Linux's largest pid: never a live process
    (tmp_path / f".checkpoint.99.safetensors.partial-{dead}-abcdef01").write_bytes(b"partial")
    (tmp_path / f".checkpoint.98.safetensors.tmp-{dead}-abcdef01").write_bytes(b"an earlier version's name")
    (tmp_path / f".checkpoint.97.safetensors.partial-{os.getpid()}-abcdef01").write_bytes(b"this process: kept")
    assert latest_checkpoint(tmp_path).name == "checkpoint.10.safetensors"
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".checkpoint.97.safetensors.partial-{os.getpid()}-abcdef01", "checkpoint.10.safetensors",
        "checkpoint.5.safetensors"]
    (tmp_path / f".checkpoint.97.safetensors.partial-{os.getpid()}-abcdef01").unlink()
    assert [p.name for p in checkpoint_folder_files(tmp_path)] == [
        "checkpoint.5.safetensors",
        "checkpoint.10.safetensors",
    ]
    assert latest_checkpoint(tmp_path / "missing") is None
    save_checkpoint(tmp_path / folder_checkpoint_name(11), {"s": torch.tensor(11)})
    assert prune_checkpoints(tmp_path, keep=0) == []  # as the reference: 0 keeps every checkpoint
    assert len(checkpoint_folder_files(tmp_path)) == 3
    with pytest.raises(ValueError, match="max_checkpoints_keep"):
        prune_checkpoints(tmp_path, keep=2.5)


def test_sigkill_while_saving_leaves_previous_checkpoint(tmp_path):
    """A process killed in the middle of overwriting a checkpoint leaves the previous one loadable."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"w": torch.zeros(4)}, trainer_state={"version": "old"})
    script = tmp_path / "writer.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, torch
        from imagen.trainer import save_checkpoint
        big = {{f"w{{i}}": torch.full((1024, 1024), float(i)) for i in range(32)}}  # 128 MiB
        print("ready", flush=True)
        while True:
            save_checkpoint({str(path)!r}, big, trainer_state={{"version": "new"}})
    """)
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 30
        while not any(p.name.startswith(".checkpoint.pt.partial-") for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    ckpt = load_checkpoint(path)  # old or (if the rename had happened) new: never torn
    assert ckpt.trainer_state["version"] in {"old", "new"}


def test_remote_filesystem_round_trip_and_partial_cleanup():
    """On an fsspec filesystem: the same container, written whole under a partial name then moved;
    partial files of other processes are removed by pruning, this process's are kept."""
    import uuid

    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    folder = f"/faults-{uuid.uuid4().hex}"
    path = save_checkpoint(f"{folder}/{folder_checkpoint_name(3)}", _tensors(), trainer_state={"s": 3}, fs=fs)
    assert path == f"{folder}/checkpoint.3.safetensors"
    ckpt = load_checkpoint(path, fs=fs)
    assert ckpt.trainer_state == {"s": 3} and torch.equal(ckpt.tensors["imagen.w"], _tensors()["imagen.w"])
    fs.pipe(f"{folder}/.checkpoint.4.safetensors.partial-{os.getpid() + 1}-0123abcd", b"killed")
    fs.pipe(f"{folder}/.checkpoint.5.safetensors.partial-{os.getpid()}-0123abcd", b"mine, in flight")
    fs.pipe(f"{folder}/.model.partial-{os.getpid() + 1}-0123abcd/config.json", b"{}")  # a partial folder
    removed = prune_checkpoints(folder, keep=2, fs=fs)
    assert sorted(p.rsplit("/", 1)[1] for p in removed) == [
        f".checkpoint.4.safetensors.partial-{os.getpid() + 1}-0123abcd", f".model.partial-{os.getpid() + 1}-0123abcd"]
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(folder, detail=False)) == [
        f".checkpoint.5.safetensors.partial-{os.getpid()}-0123abcd", "checkpoint.3.safetensors"]
    assert latest_checkpoint(folder, fs) == path
    fs.pipe(f"{folder}/bad.safetensors", fs.cat_file(path)[:-1])
    with pytest.raises(CheckpointError, match="torn or truncated"):
        load_checkpoint(f"{folder}/bad.safetensors", fs=fs)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(f"{folder}/missing.safetensors", fs=fs)


def test_remote_write_failure_leaves_no_partial(monkeypatch):
    import uuid

    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem()
    folder = f"/faults-{uuid.uuid4().hex}"
    save_checkpoint(f"{folder}/c.safetensors", {"w": torch.zeros(2)}, fs=fs)

    moves = []

    def broken_mv(source, target, **kwargs):
        moves.append((source, target))
        raise OSError("the store went away")

    monkeypatch.setattr(fs, "mv", broken_mv)
    with pytest.raises(OSError, match="went away"):
        save_checkpoint(f"{folder}/c.safetensors", {"w": torch.ones(2)}, fs=fs)
    monkeypatch.undo()
    (source, target), = moves
    assert target == f"{folder}/c.safetensors"
    assert source.startswith(f"{folder}/.c.safetensors.partial-{os.getpid()}-")
    assert fs.ls(folder, detail=False) == [f"{folder}/c.safetensors"]
    assert torch.equal(load_checkpoint(f"{folder}/c.safetensors", fs=fs).tensors["w"], torch.zeros(2))
