"""Short versions of the fault-injection suites in ``faults/`` (``nox -s faults`` runs the full
ones): a few SIGKILLs aimed inside saves, damaged files against every loader, full and read-only
disks (tmpfs when root), and a disk that fails mid-write (simulated)."""

import errno
import importlib
import sys
from pathlib import Path

import pytest
import torch

FAULTS = Path(__file__).resolve().parents[3] / "faults"
if not (FAULTS / "faults_lib.py").is_file():  # an installed package tested without the repository
    pytest.skip("the faults/ folder of the repository is not here", allow_module_level=True)
sys.path.insert(0, str(FAULTS))
faults_lib = importlib.import_module("faults_lib")  # the repository's faults/ folder, not a distribution

from imagen.cascade import CheckpointError, load_imagen_from_checkpoint  # noqa: E402
from imagen.cascade import container as container_module  # noqa: E402
from imagen.trainer import load_checkpoint, save_checkpoint  # noqa: E402


def test_sigkill_loop_short(tmp_path):
    report = faults_lib.kill_loop(tmp_path / "checkpoints", 3, seed=3)
    print(report.report())
    assert report.trials == 3 and report.failures == []


def test_damaged_files_short(tmp_path):
    tally = faults_lib.mutation_suite(tmp_path, flips=2, seed=4, per_kind=12)
    print(tally.report("damaged checkpoint files"))
    assert tally.failures == []


@pytest.mark.skipif(not faults_lib.can_mount(), reason="needs root and permission to mount a tmpfs")
def test_full_disk_short(tmp_path):
    with faults_lib.tmpfs(tmp_path / "disk", size="8m") as root:
        report = faults_lib.unwritable_disk_checks(root, lambda: faults_lib.fill(root))
    print(report.report("full disk (tmpfs)"))
    assert report.failures == []


@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
def test_a_failing_disk_leaves_the_old_file_and_no_partial(tmp_path, monkeypatch, where):
    """ENOSPC at any step of the atomic write: an OSError naming the file, the old file intact."""
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"w": torch.zeros(3)}, trainer_state={"v": "old"})

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "rename":
        monkeypatch.setattr(container_module.os, "replace", no_space)
    elif where == "fsync":
        monkeypatch.setattr(container_module.os, "fsync", no_space)
    else:
        monkeypatch.setattr(container_module, "open", lambda *a, **k: _FailingFile(open(*a, **k)), raising=False)
    with pytest.raises(OSError, match="No space left") as caught:
        save_checkpoint(path, {"w": torch.ones(3)}, trainer_state={"v": "new"})
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and str(path) in str(caught.value)
    assert load_checkpoint(path).trainer_state == {"v": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]


class _FailingFile:
    """A real file (the partial file exists) whose writes fail as on a full disk."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()
        return False

    def write(self, data):
        self.handle.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_header_length_bytes_that_look_like_a_pickle_still_load(tmp_path):
    """A safetensors header whose length starts with 0x80 (a pickle's first byte) or 'PK' is read."""
    for pad in range(0, 200):  # metadata lengths that walk the header length over 0x80 and 0x4B50
        path = tmp_path / f"c{pad}.safetensors"
        save_checkpoint(path, {"w": torch.ones(2)}, trainer_state={"pad": "x" * pad})
        head = path.read_bytes()[:2]
        if head[0] == 0x80:
            assert load_checkpoint(path).trainer_state == {"pad": "x" * pad}
            break
    else:
        pytest.fail("no header length started with 0x80")
    with pytest.raises(CheckpointError, match="no imagen_config"):
        load_imagen_from_checkpoint(path)  # read as a container, not taken for a reference .pt
