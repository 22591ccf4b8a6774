"""`imagen sample --init-image / --inpaint-image --inpaint-mask`: img2img and inpainting from files."""

import numpy as np
import pytest
import torch
from cli_testing import run_cli
from PIL import Image

from imagen.cascade import Cascade


@pytest.fixture
def model(config_file, tmp_path):
    assert run_cli("train", "--config", str(config_file), "--steps", "1") == 0
    return str(tmp_path / "checkpoints")


def _files(tmp_path):
    picture = Image.new("RGB", (16, 16), (200, 40, 40))
    picture.putpixel((3, 5), (0, 0, 255))
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (8, 0, 16, 16))  # the right half is redrawn
    picture.save(tmp_path / "picture.png")
    mask.save(tmp_path / "mask.png")
    return str(tmp_path / "picture.png"), str(tmp_path / "mask.png")


def test_the_files_reach_sample_as_init_images_and_a_keep_mask(model, tmp_path, monkeypatch):
    picture, mask = _files(tmp_path)
    calls = []

    def sample(cascade, **options):
        calls.append(options)
        return torch.zeros(len(options["generator"]), 3, 16, 16)

    monkeypatch.setattr(Cascade, "sample", sample)
    assert run_cli("sample", "--model", model, "a cat", "a dog", "--init-image", picture, "--skip-steps", "2,0",
                   "--inpaint-image", picture, "--inpaint-mask", mask, "--output-dir", str(tmp_path / "out")) == 0
    (options,) = calls
    init = options["init_images"][0]
    assert options["refine_from_step"] == (2, None) and options["init_images"][1] is None
    assert init.shape == (2, 3, 16, 16) and torch.allclose(init[1, :, 5, 3], torch.tensor([0.0, 0.0, 1.0]))
    keep = options["inpaint_masks"]
    assert keep.shape == (2, 16, 16) and keep[:, :, :8].all() and not keep[:, :, 8:].any()
    assert torch.equal(options["inpaint_images"], init)


def test_img2img_and_inpainting_run_end_to_end(model, tmp_path):
    picture, mask = _files(tmp_path)
    out = tmp_path / "out"
    assert run_cli("sample", "--model", model, "a cat", "--init-image", picture, "--skip-steps", "2,1",
                   "--output-dir", str(out / "a")) == 0
    assert run_cli("sample", "--model", model, "a cat", "--inpaint-image", picture, "--inpaint-mask", mask,
                   "--output-dir", str(out / "b")) == 0
    def pixels(path):
        return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).int()

    kept = pixels(out / "b" / "a_cat.png")[:, :8] - pixels(picture)[:, :8]
    assert kept.abs().max() <= 1  # the black half of the mask is the picture (up to rounding)


@pytest.mark.parametrize(("extra", "message"), [
    (["--init-image", "missing.png", "--skip-steps", "1,0"], "no such file"),
    (["--init-image", "{picture}"], "needs --skip-steps"),
    (["--inpaint-image", "{picture}"], "go together"),
    (["--inpaint-image", "{picture}", "--inpaint-mask", "{small}"], "must be of one size"),
    (["--init-image", "{text}", "--skip-steps", "1,0"], "not an image"),
])
def test_bad_image_options_are_one_line(model, tmp_path, capsys, extra, message):
    picture, _ = _files(tmp_path)
    Image.new("L", (4, 4)).save(tmp_path / "small.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    names = dict(picture=picture, small=str(tmp_path / "small.png"), text=str(tmp_path / "notes.txt"))
    argv = [a.format(**names) for a in extra]
    assert run_cli("sample", "--model", model, "a cat", *argv, "--output-dir", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
