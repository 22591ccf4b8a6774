"""`imagen train` from a Hugging Face ``datasets`` table (dataset.hf_path / dataset.hf_name)."""

import json

import pytest
from cli_testing import run_cli, tiny_config

from imagen.trainer import latest_checkpoint, load_checkpoint

datasets = pytest.importorskip("datasets")


def test_train_reads_a_saved_dataset_and_refuses_an_uncached_name(tmp_path, tiny_t5, image_folder, capsys,
                                                                   monkeypatch):
    pngs = sorted(image_folder.glob("*.png"))
    table = datasets.Dataset.from_dict(
        {"picture": [str(p) for p in pngs], "words": [p.with_suffix(".txt").read_text() for p in pngs]},
        features=datasets.Features({"picture": datasets.Image(), "words": datasets.Value("string")}),
    )
    table.save_to_disk(str(tmp_path / "saved"))
    config = tiny_config(tiny_t5, image_folder, tmp_path / "checkpoints")
    config["dataset"].update(folder="./does-not-exist", hf_path=str(tmp_path / "saved"), caption_column="words")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert run_cli("train", "--config", str(path), "--unet", "2", "--steps", "2") == 0
    assert load_checkpoint(latest_checkpoint(tmp_path / "checkpoints")).trainer_state["steps"] == [0, 2]
    table.add_column("t5", [[[0.1] * 16] * 3] * len(pngs)).save_to_disk(str(tmp_path / "embedded"))  # tiny T5: 16
    assert run_cli("train", "--config", str(path), "--unet", "2", "--steps", "1", "--dataset.hf_path",
                   str(tmp_path / "embedded"), "--dataset.text_embeds_column", "t5") == 0
    assert load_checkpoint(latest_checkpoint(tmp_path / "checkpoints")).trainer_state["steps"] == [0, 3]
    # the reference CLI's dataset_name + split_valid_from_train
    assert run_cli("train", "--config", str(path), "--unet", "2", "--steps", "1", "--trainer.split_valid_from_train",
                   "true", "--trainer.split_valid_fraction", "0.34", "--trainer.validate_every", "1") == 0
    assert load_checkpoint(latest_checkpoint(tmp_path / "checkpoints")).trainer_state["steps"] == [0, 4]
    capsys.readouterr()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    assert run_cli("train", "--config", str(path), "--steps", "1", "--dataset.hf_path", "null",
                   "--dataset.hf_name", "someone/not-cached") == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "dataset.hf_name 'someone/not-cached'" in error and "HF_HUB_OFFLINE" in error
    assert run_cli("train", "--config", str(path), "--steps", "1", "--dataset.shards", str(tmp_path)) == 2
    assert "dataset.shards and dataset.hf_path both name the training data" in capsys.readouterr().err
