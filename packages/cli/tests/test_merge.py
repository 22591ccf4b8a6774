"""`imagen merge`: stages trained in separate runs become one cascade that samples."""

import json

import pytest
import torch
from cli_testing import run_cli, tiny_config

from imagen.trainer import latest_checkpoint, load_checkpoint


def _run(tmp_path, tiny_t5, image_folder, name: str, unet: int, steps: int = 2):
    folder = tmp_path / name
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(tiny_config(tiny_t5, image_folder, folder)))
    assert run_cli("train", "--config", str(config), "--unet", str(unet), "--steps", str(steps)) == 0
    return folder


def _stage(tensors: dict, prefix: str, index: int) -> dict:
    head = f"{prefix}unets.{index}."
    return {k: v for k, v in tensors.items() if k.startswith(head)}


def test_two_stage_runs_merge_into_a_cascade_with_their_weights(tmp_path, tiny_t5, image_folder, capsys):
    base = _run(tmp_path, tiny_t5, image_folder, "base", unet=1)
    sr = _run(tmp_path, tiny_t5, image_folder, "sr", unet=2, steps=3)
    merged = tmp_path / "merged.safetensors"
    assert run_cli("merge", str(merged), str(base), str(sr)) == 0
    out = load_checkpoint(merged)
    runs = [load_checkpoint(latest_checkpoint(base)), load_checkpoint(latest_checkpoint(sr))]
    assert out.trainer_state["steps"] == [2, 3]
    for index, run in enumerate(runs):
        for prefix in ("imagen.", "ema_imagen."):
            expected = _stage(run.tensors, prefix, index)
            got = _stage(out.tensors, prefix, index)
            assert expected and got.keys() == expected.keys()
            assert all(torch.equal(got[k], expected[k]) for k in expected)
        assert any(k.startswith(f"optim.{index}.") for k in out.tensors)  # the stage's optimizer goes along
    assert not torch.equal(*(r.tensors["imagen.unets.1.final_conv.weight"] for r in runs))  # the choice matters
    assert run_cli("sample", "--model", str(merged), "a red circle in the center", "--steps", "2",
                   "--output-dir", str(tmp_path / "images")) == 0
    assert (tmp_path / "images" / "a_red_circle_in_the_center.png").is_file()


def test_an_ambiguous_or_foreign_run_is_refused_naming_it(tmp_path, tiny_t5, image_folder, capsys):
    first = _run(tmp_path, tiny_t5, image_folder, "a", unet=1)
    second = _run(tmp_path, tiny_t5, image_folder, "b", unet=1)
    assert run_cli("merge", str(tmp_path / "m.safetensors"), str(first), str(second)) == 2
    assert "unet 1 was trained in several sources" in capsys.readouterr().err
    assert run_cli("merge", str(tmp_path / "m.safetensors"), str(first), str(second), "--stage", f"1={second}") == 0
    other = tiny_config(tiny_t5, image_folder, tmp_path / "c")
    other["imagen"]["cond_drop_prob"] = 0.5
    (tmp_path / "c.json").write_text(json.dumps(other))
    assert run_cli("train", "--config", str(tmp_path / "c.json"), "--unet", "2", "--steps", "1") == 0
    assert run_cli("merge", str(tmp_path / "n.safetensors"), str(first), str(tmp_path / "c")) == 2
    assert "cond_drop_prob" in capsys.readouterr().err
    assert run_cli("merge", str(tmp_path / "m.safetensors"), str(first)) == 2  # exists: --force
    assert run_cli("merge", str(tmp_path / "x.safetensors"), str(first), "--stage", "two=b") == 2


@pytest.mark.parametrize("missing", ["nothing-here", "empty-folder"])
def test_a_missing_source_is_one_line(tmp_path, missing, capsys):
    (tmp_path / "empty-folder").mkdir()
    assert run_cli("merge", str(tmp_path / "m.safetensors"), str(tmp_path / missing)) == 2
    assert capsys.readouterr().err.count("\n") == 1
