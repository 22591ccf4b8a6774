"""The reference CLI's spellings and defaults, and `imagen convert` of imagen-pytorch checkpoints."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from cli_testing import run_cli, tiny_config
from ema_pytorch import EMA
from torch import nn

import imagen.cascade
from imagen.cascade import Cascade, CascadeConfig, load_imagen_from_checkpoint
from imagen.trainer import load_checkpoint

cli_main = importlib.import_module("imagen.cli.main")  # the module (imagen.cli.main is also the function's name)


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(lines) == 1, lines
    return lines[0]


def _reference_file(path: Path, imagen_params: dict, *, steps: int = 2, with_params: bool = True):
    """A checkpoint in imagen-pytorch's trainer layout for the cascade ``imagen_params`` describes."""
    cascade = CascadeConfig.from_dict(imagen_params).create(seed=3)
    emas = nn.ModuleList([EMA(unet, beta=0.5, update_after_step=0, update_every=1) for unet in cascade.unets])
    optimizers = [torch.optim.Adam(unet.parameters(), lr=1e-3, betas=(0.9, 0.99)) for unet in cascade.unets]
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for unet, optimizer, ema in zip(cascade.unets, optimizers, emas):
            for p in unet.parameters():
                p.grad = torch.randn(p.shape, generator=g) * 0.01
            optimizer.step()
            ema.update()
    contents = {"model": cascade.state_dict(), "ema": emas.state_dict(), "version": "2.1.0",
                "steps": torch.tensor([steps] * len(cascade.unets))}
    for i, optimizer in enumerate(optimizers):
        contents.update({f"optim{i}": optimizer.state_dict(), f"scaler{i}": {}})
    if with_params:
        params = {k: v for k, v in imagen_params.items() if k != "kind"}
        contents.update(imagen_type="original", imagen_params=params)
    torch.save(contents, path)
    return cascade, emas


@pytest.fixture
def imagen_params(tiny_t5, image_folder, tmp_path) -> dict:
    return tiny_config(tiny_t5, image_folder, tmp_path / "checkpoints")["imagen"]


def test_convert_then_sample_and_resume(imagen_params, config_file, tmp_path, capsys):
    cascade, emas = _reference_file(tmp_path / "ref.pt", imagen_params)
    out = tmp_path / "converted" / "checkpoint.safetensors"
    assert run_cli("convert", str(tmp_path / "ref.pt"), str(out)) == 0
    assert "steps [2, 2]" in capsys.readouterr().out
    ckpt = load_checkpoint(out)
    assert ckpt.trainer_state["steps"] == [2, 2] and set(ckpt.trainer_state["optimizers"]) == {"0", "1"}
    online = load_imagen_from_checkpoint(out)
    for key, value in cascade.state_dict().items():
        assert torch.equal(online.state_dict()[key], value), key
    averaged = load_imagen_from_checkpoint(out, load_ema_if_available=True)
    for i, ema in enumerate(emas):
        for key, value in ema.ema_model.state_dict().items():
            assert torch.equal(averaged.unets[i].state_dict()[key], value), key
    # the converted file samples and resumes like one of ours
    samples = tmp_path / "samples"
    assert run_cli("sample", "--model", str(out), "a red circle in the top left", "--steps", "2",
                   "--output-dir", str(samples)) == 0
    assert (samples / "a_red_circle_in_the_top_left.png").is_file()
    direct = tmp_path / "direct"  # the reference's file itself samples the same picture
    assert run_cli("sample", "--model", str(tmp_path / "ref.pt"), "a red circle in the top left", "--steps", "2",
                   "--output-dir", str(direct)) == 0
    name = "a_red_circle_in_the_top_left.png"
    assert (direct / name).read_bytes() == (samples / name).read_bytes()
    assert run_cli("train", "--config", str(config_file), "--steps", "1", "--resume", str(out)) == 0


def test_convert_without_imagen_params_takes_a_config(imagen_params, config_file, tmp_path, capsys):
    _reference_file(tmp_path / "ref.pt", imagen_params, with_params=False)
    out = tmp_path / "out.safetensors"
    assert run_cli("convert", str(tmp_path / "ref.pt"), str(out)) == 2
    assert "no imagen_params" in _error_line(capsys) and not out.exists()
    assert run_cli("convert", str(tmp_path / "ref.pt"), str(out), "--config", str(config_file)) == 0
    assert load_checkpoint(out).trainer_state["steps"] == [2, 2]


class _WritesAFile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_convert_errors_are_one_line_and_write_nothing(imagen_params, tmp_path, capsys):
    out = tmp_path / "out" / "c.safetensors"
    assert run_cli("convert", str(tmp_path / "missing.pt"), str(out)) == 2
    assert "no such file" in _error_line(capsys)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert run_cli("convert", str(tmp_path / "text.pt"), str(out)) == 2
    assert "not a torch.save file" in _error_line(capsys)
    marker = tmp_path / "marker"
    torch.save({"model": {}, "payload": _WritesAFile(marker)}, tmp_path / "evil.pt")
    assert run_cli("convert", str(tmp_path / "evil.pt"), str(out)) == 2
    line = _error_line(capsys)
    assert "evil.pt" in line and "builtins.exec" in line and "nothing in it was run" in line
    assert not marker.exists()
    _reference_file(tmp_path / "ref.pt", imagen_params)
    other = dict(imagen_params, unets=[dict(u, dim=16) for u in imagen_params["unets"]])
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert run_cli("convert", str(tmp_path / "ref.pt"), str(out), "--config", str(tmp_path / "other.json")) == 2
    assert "do not fit" in _error_line(capsys)
    assert not (tmp_path / "out").exists()
    out.parent.mkdir()
    out.write_text("keep me")
    assert run_cli("convert", str(tmp_path / "ref.pt"), str(out)) == 2
    assert "--force" in _error_line(capsys) and out.read_text() == "keep me"


def test_sample_reference_spellings_and_defaults(config_file, tmp_path, monkeypatch):
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 0
    model = str(tmp_path / "checkpoints")
    seen = {}
    loader = imagen.cascade.load_imagen_from_checkpoint

    def load(path, **kwargs):
        seen["load"] = kwargs
        return loader(path, **kwargs)

    def sample(cascade, cond_scale, generator, **options):
        seen["scales"] = cond_scale
        return torch.zeros(len(generator), 3, 16, 16)

    monkeypatch.setattr(imagen.cascade, "load_imagen_from_checkpoint", load)
    monkeypatch.setattr(Cascade, "sample", sample)
    out = str(tmp_path / "out")
    assert run_cli("sample", "--model", model, "a red circle", "--output-dir", out) == 0
    assert seen["scales"] == (5.0, 5.0) and seen["load"]["load_ema_if_available"] is True  # the reference CLI's
    assert run_cli("sample", "--model", model, "a red circle", "--cond_scale", "2", "--load_ema", "false",
                   "--output-dir", out, "--overwrite") == 0  # the reference overwrote silently; we refuse without it
    assert seen["scales"] == (2.0, 2.0) and seen["load"]["load_ema_if_available"] is False
    assert run_cli("sample", "--model", model, "a red circle", "--load_ema", "maybe", "--output-dir", out) == 2


def test_train_runs_50_epochs_by_default(config_file, tmp_path):
    document = json.loads(config_file.read_text())
    document["dataset"]["batch_size"] = 6  # 6 images: one step per epoch
    config_file.write_text(json.dumps(document))
    assert run_cli("train", "--config", str(config_file), "--unet", "1") == 0
    assert load_checkpoint(tmp_path / "checkpoints" / "checkpoint.50.safetensors").trainer_state["steps"] == [50, 0]


def test_train_to_an_fsspec_url_and_resume(config_file):
    import uuid

    import fsspec

    url = f"memory://imagen-cli-{uuid.uuid4().hex}/run"
    document = json.loads(config_file.read_text())
    document["trainer"].update(checkpoint_path=url, fs_kwargs={})
    config_file.write_text(json.dumps(document))
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 0
    assert run_cli("train", "--config", str(config_file), "--steps", "1", "--resume") == 0
    fs, folder = fsspec.core.url_to_fs(url)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))[-1] == "checkpoint.2.safetensors"


def test_skip_steps_refine_the_stage_before_in_one_sample_call(config_file, tmp_path, monkeypatch):
    """--skip-steps 0,N is refine_from_step=(None, N): one cascade.sample call, no stage-by-stage loop."""
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 0
    calls = []

    def sample(cascade, **options):
        calls.append(options)
        return torch.zeros(len(options["generator"]), 3, 16, 16)

    monkeypatch.setattr(Cascade, "sample", sample)
    out = str(tmp_path / "out")
    model = str(tmp_path / "checkpoints")
    assert run_cli("sample", "--model", model, "a red circle", "--skip-steps", "0,2", "--output-dir", out) == 0
    assert len(calls) == 1 and calls[0]["refine_from_step"] == (None, 2)
    assert run_cli("sample", "--model", model, "a red circle", "--skip-steps", "0,5", "--steps", "5",
                   "--output-dir", out) == 2
