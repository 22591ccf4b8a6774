"""Prompts files: `imagen sample --prompts-file F` and the config's `trainer.sample_prompts_file`."""

import json

import pytest
import torch
from cli_testing import run_cli

from imagen.cascade import Cascade


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def model(config_file, tmp_path):
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 0
    return str(tmp_path / "checkpoints")


def test_the_file_s_prompts_follow_the_positional_ones(model, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("\ufeffa red circle\r\n\n   \n  a blue square in the center  \n".encode())  # BOM, CRLF
    calls = []

    def sample(cascade, **options):
        calls.append(options)
        return torch.zeros(len(options["generator"]), 3, 16, 16)

    monkeypatch.setattr(Cascade, "sample", sample)
    out = tmp_path / "out"
    assert run_cli("sample", "--model", model, "a green triangle", "--prompts-file", str(prompts),
                   "--batch-size", "2", "--output-dir", str(out)) == 0
    assert [c["texts"] for c in calls] == [["a green triangle", "a red circle"], ["a blue square in the center"]]
    assert sorted(p.name for p in out.iterdir()) == ["a_blue_square_in_the_center.png", "a_green_triangle.png",
                                                     "a_red_circle.png"]
    calls.clear()
    out = str(tmp_path / "o2")
    assert run_cli("sample", "--model", model, "--prompts-file", str(prompts), "--output-dir", out) == 0
    assert calls[0]["texts"] == ["a red circle", "a blue square in the center"]  # the file alone


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"a red circle\n\xff\xfe broken\n", "not UTF-8"),
    (b"\n  \n\n", "holds no prompts"),
    ("folder", "is a folder"),
])
def test_a_bad_prompts_file_is_one_line_and_nothing_is_written(tmp_path, capsys, content, message):
    path = tmp_path / "prompts.txt"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    # checked before the model is read: --model need not exist for the error to name the file
    assert run_cli("sample", "--model", str(tmp_path / "none"), "--prompts-file", str(path),
                   "--output-dir", str(out)) == 2
    err = _error_line(capsys)
    assert "--prompts-file" in err and str(path) in err and message in err
    assert not out.exists()


def test_training_sample_grids_take_their_prompts_from_a_file(config_file, tmp_path):
    prompts = tmp_path / "grid_prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    document = json.loads(config_file.read_text())
    document["trainer"].update(sample_every=1, sample_prompts_file=str(prompts), sample_steps=2,
                               sample_folder=str(tmp_path / "grids"))
    config_file.write_text(json.dumps(document))
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 0
    assert [p.suffix for p in (tmp_path / "grids").iterdir()] == [".png"]


def test_a_bad_sample_prompts_file_fails_before_training(config_file, tmp_path, capsys):
    document = json.loads(config_file.read_text())
    document["trainer"].update(sample_every=1, sample_prompts_file=str(tmp_path / "missing.txt"),
                               sample_folder=str(tmp_path / "grids"))
    config_file.write_text(json.dumps(document))
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 2
    err = _error_line(capsys)
    assert "trainer.sample_prompts_file" in err and "missing.txt" in err and "no such file" in err
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "grids").exists()
