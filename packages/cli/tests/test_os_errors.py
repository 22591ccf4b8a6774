"""Ordinary OS conditions are user errors: one line on stderr, exit status 2, no traceback, no
partial file left (issue 13). The full-disk and read-only cases mount a small tmpfs and are skipped
where that is not allowed (not root)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_testing import run_cli, tiny_config


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1 and ": error: " in lines[0] and "Traceback" not in err, err
    return lines[0]


@contextlib.contextmanager
def _tmpfs(folder: Path, *options: str):
    """A tmpfs mounted on ``folder`` (skips the test where mounting is not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or "tmp" in p.name or "partial" in p.name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_t5, image_folder) -> Path:
    """A checkpoint folder of a tiny cascade trained one step."""
    root = tmp_path_factory.mktemp("os-errors")
    config = root / "config.json"
    config.write_text(json.dumps(tiny_config(tiny_t5, image_folder, root / "checkpoints")))
    assert run_cli("train", "--config", str(config), "--steps", "1") == 0
    return root / "checkpoints"


def test_config_path_on_a_directory(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    assert run_cli("config", "--path", str(tmp_path / "folder")) == 2
    assert "is a folder" in _error_line(capsys)
    assert run_cli("config", "--path", str(tmp_path / "folder"), "--force") == 2
    assert "is a folder" in _error_line(capsys)
    assert list((tmp_path / "folder").iterdir()) == []


def test_config_path_under_a_file(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert run_cli("config", "--path", str(tmp_path / "file" / "config.json")) == 2
    assert "file" in _error_line(capsys)


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_output_dir_that_is_a_file_or_under_one(trained, tmp_path, capsys, where):
    (tmp_path / "file").write_text("x")
    output = tmp_path / "file" if where == "a file" else tmp_path / "file" / "out"
    assert run_cli("sample", "--model", str(trained), "--steps", "1", "--output-dir", str(output), "a cat") == 2
    assert "--output-dir" in _error_line(capsys)
    assert (tmp_path / "file").read_text() == "x"


def test_a_second_sample_run_does_not_overwrite_earlier_images(trained, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["sample", "--model", str(trained), "--steps", "1", "--output-dir", str(out)]
    assert run_cli(*base, "a cat", "a dog") == 0
    capsys.readouterr()
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(first) == ["a_cat.png", "a_dog.png"]
    assert run_cli(*base, "--seed", "3", "a dog") == 2  # refused before sampling
    line = _error_line(capsys)
    assert "a_dog.png already exists" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert run_cli(*base, "--seed", "3", "--overwrite", "a dog") == 0
    capsys.readouterr()
    assert (out / "a_dog.png").read_bytes() != first["a_dog.png"]
    assert (out / "a_cat.png").read_bytes() == first["a_cat.png"]


def test_a_t5_folder_with_a_bad_pytorch_model_bin(tmp_path, tiny_t5, image_folder, capsys):
    broken = tmp_path / "t5"
    shutil.copytree(tiny_t5, broken)
    for weights in broken.glob("model*.safetensors"):
        weights.unlink()
    (broken / "pytorch_model.bin").write_bytes(b"definitely not a torch.save archive")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(broken, image_folder, tmp_path / "checkpoints")))
    assert run_cli("encode-text", "--config", str(config), "--output", str(tmp_path / "cache")) == 2
    line = _error_line(capsys)
    assert "cannot load the model of text encoder" in line and str(broken) in line
    assert run_cli("train", "--config", str(config), "--steps", "1") == 2
    assert "cannot load the model of text encoder" in _error_line(capsys)


def test_a_read_only_checkpoint_folder(tmp_path, tiny_t5, image_folder, capsys):
    with _tmpfs(tmp_path / "ro", "ro", "size=1m") as folder:
        config = tmp_path / "config.json"
        config.write_text(json.dumps(tiny_config(tiny_t5, image_folder, folder / "checkpoints")))
        assert run_cli("train", "--config", str(config), "--steps", "1") == 2
        assert "read-only" in _error_line(capsys).lower()


def test_a_full_disk_while_saving_a_checkpoint(tmp_path, tiny_t5, image_folder, capsys):
    with _tmpfs(tmp_path / "full", "size=64k") as folder:
        config = tmp_path / "config.json"
        config.write_text(json.dumps(tiny_config(tiny_t5, image_folder, folder / "checkpoints")))
        assert run_cli("train", "--config", str(config), "--steps", "1") == 2
        assert "no space left" in _error_line(capsys).lower()
        assert _leftovers(folder) == []


def test_a_full_disk_while_writing_samples(trained, tmp_path, capsys):
    with _tmpfs(tmp_path / "full", "size=4k") as folder:
        (folder / "filler").write_bytes(b"\0" * 4096)  # the tmpfs is now full
        assert (
            run_cli("sample", "--model", str(trained), "--steps", "1", "--output-dir", str(folder / "out"), "a cat")
            == 2
        )
        assert "no space left" in _error_line(capsys).lower()
        assert _leftovers(folder) == []


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("nonsense", "--device 'nonsense' is not a torch device"),  # was an internal error (exit 1); found by fuzzing
        ("cuda:7", "--device cuda:7: "),
    ("meta", "--device meta: sampling runs on cpu, cuda, mps, xpu devices, not meta"),
    ],
)
def test_a_device_that_is_not_here(trained, tmp_path, capsys, device, expected):
    if device.startswith("cuda"):
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("this machine has 8 CUDA devices")
    argv = ["sample", "--model", str(trained), "--steps", "1", "--output-dir", str(tmp_path), "--device", device, "a"]
    assert run_cli(*argv) == 2
    assert expected in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []
