"""Every bad invocation is one line on stderr, exit status 2, and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_testing import run_cli, tiny_config


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1, err
    assert ": error: " in lines[0]
    return lines[0]


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--epochs", "0"], "out of range"),
        (["train", "--unet", "x"], "not an integer"),
        (["train", "--epochs", "1", "--steps", "2"], "not allowed with"),
        (["sample", "a cat"], "--model"),
        (["sample", "--model", "m", "--cond-scale", "strong"], "not a number"),
        (["sample", "--model", "m", "--cond-scale", "-1"], "out of range"),
        (["sample", "--model", "m", "--cond-scale", "4,x"], "not a number"),
        (["sample", "--model", "m", "--steps", "8,zero"], "not an integer"),
        (["sample", "--model", "m", "--sampler", "nope"], "unknown sampler"),
        (["sample", "--model", "m", "--batch-size", "0"], "out of range"),
        (["demo", "--minutes", "0"], "must be > 0"),
        (["fly"], "invalid choice"),
        ([], "required"),
    ],
)
def test_usage_errors(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(*argv) == 2
    assert expected in _error_line(capsys)
    assert _files(tmp_path) == set()


def test_missing_config_file(tmp_path, capsys):
    assert run_cli("train", "--config", str(tmp_path / "nope.json")) == 2
    assert "nope.json" in _error_line(capsys)


def test_config_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text("{}")
    assert run_cli("config", "--path", str(path)) == 2
    assert "already exists" in _error_line(capsys)
    assert path.read_text() == "{}"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("imagen", "timestepz", 10, "unknown ImagenConfig keys ['timestepz']"),
        ("trainer", "learning_rate", 0.1, "unknown trainer keys ['learning_rate']"),
        ("dataset", "path", "x", "unknown dataset keys ['path']"),
        (None, "model", {}, "unknown config sections ['model']"),
        ("trainer", "lr", -1, "trainer.lr must be a positive number"),
        ("dataset", "batch_size", 0, "dataset.batch_size must be an integer >= 1"),
        ("imagen", "kind", "Dalle", "unknown cascade kind 'Dalle'"),
    ],
)
def test_bad_config_keys_and_values(section, key, value, expected, config_file, tmp_path, capsys):
    document = json.loads(config_file.read_text())
    (document if section is None else document[section])[key] = value
    config_file.write_text(json.dumps(document))
    before = _files(tmp_path)
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 2
    assert expected in _error_line(capsys)
    assert _files(tmp_path) == before


def test_config_that_is_not_json(config_file, capsys):
    config_file.write_text("{imagen: ")
    assert run_cli("train", "--config", str(config_file)) == 2
    assert "not valid JSON" in _error_line(capsys)


def test_unet_number_out_of_range(config_file, tmp_path, capsys):
    before = _files(tmp_path)
    assert run_cli("train", "--config", str(config_file), "--unet", "3", "--steps", "1") == 2
    assert "--unet 3 is out of range: this cascade has 2 unets" in _error_line(capsys)
    assert _files(tmp_path) == before


def test_missing_dataset_folder(config_file, tmp_path, capsys):
    document = json.loads(config_file.read_text())
    document["dataset"]["folder"] = str(tmp_path / "no-images")
    config_file.write_text(json.dumps(document))
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 2
    assert "no-images" in _error_line(capsys)


def test_resume_without_a_checkpoint(config_file, tmp_path, capsys):
    assert run_cli("train", "--config", str(config_file), "--resume") == 2
    assert "no checkpoint" in _error_line(capsys)
    assert run_cli("train", "--config", str(config_file), "--resume", str(tmp_path / "x.pt")) == 2
    assert "x.pt" in _error_line(capsys)


def test_resume_from_a_checkpoint_of_another_cascade(config_file, tmp_path, tiny_t5, image_folder, capsys):
    other = tiny_config(tiny_t5, image_folder, tmp_path / "other", kind="ElucidatedImagen")
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert run_cli("train", "--config", str(tmp_path / "other.json"), "--steps", "1") == 0
    capsys.readouterr()
    checkpoint = next((tmp_path / "other").glob("checkpoint.*.safetensors"))
    assert run_cli("train", "--config", str(config_file), "--resume", str(checkpoint), "--steps", "1") == 2
    assert "another cascade config" in _error_line(capsys)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"\x80\x04pickle", b"PK\x03\x04zip"])
def test_sample_from_a_file_that_is_not_a_checkpoint(content, tmp_path, capsys):
    model = tmp_path / "model.pt"
    model.write_bytes(content)
    out = tmp_path / "out"
    assert run_cli("sample", "--model", str(model), "a cat", "--output-dir", str(out)) == 2
    _error_line(capsys)
    assert not out.exists()


def test_sample_from_a_safetensors_file_without_a_cascade(tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    assert run_cli("sample", "--model", str(tmp_path / "weights.safetensors"), "a cat") == 2
    assert "not a cascade checkpoint" in _error_line(capsys)


def test_sample_errors_after_loading(config_file, tmp_path, capsys):
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 0
    capsys.readouterr()
    model, out = str(tmp_path / "checkpoints"), tmp_path / "out"
    cases = [
        (["--steps", "1,2,3", "a cat"], "--steps gives 3 values, but the cascade has 2 stages"),
        (["--sampler", "ddim,euler,heun", "a cat"], "--sampler gives 3 values"),
        ([], "give at least one prompt"),
        (["  "], "must not be empty"),
    ]
    for extra, expected in cases:
        assert run_cli("sample", "--model", model, "--output-dir", str(out), *extra) == 2
        assert expected in _error_line(capsys)
    assert not out.exists()
    assert run_cli("sample", "--model", str(tmp_path / "nothing-here"), "a cat") == 2
    assert "no such file" in _error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert run_cli("sample", "--model", str(tmp_path / "empty"), "a cat") == 2
    assert "holds no checkpoint" in _error_line(capsys)


def test_per_stage_option_errors(config_file, tmp_path, capsys):
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 0
    capsys.readouterr()
    model = str(tmp_path / "checkpoints")
    assert run_cli("sample", "--model", model, "a cat", "--skip-steps", "2,0") == 2
    assert "the first stage has no image to start from" in _error_line(capsys)
    assert run_cli("sample", "--model", model, "a cat", "--cond-scale", "1,2,3") == 2
    assert "--cond-scale gives 3 values" in _error_line(capsys)
    assert run_cli("sample", "--model", model, "a cat", "--skip-steps", "-1") == 2
    assert "out of range" in _error_line(capsys)


def test_an_unexpected_failure_is_one_line_without_a_traceback(config_file, capsys, monkeypatch):
    import importlib

    cli_main = importlib.import_module("imagen.cli.main")

    def broken(args):
        raise RuntimeError("something inside broke")

    monkeypatch.setitem(cli_main.COMMANDS, "train", broken)
    monkeypatch.delenv("IMAGEN_CLI_TRACEBACK", raising=False)
    assert run_cli("train", "--config", str(config_file)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: something inside broke" in err
    assert "Traceback" not in err
