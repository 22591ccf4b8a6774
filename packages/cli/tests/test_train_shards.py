"""`imagen train` from webdataset shards (dataset.shards) with loader settings from the config."""

import json

from cli_testing import run_cli, tiny_config

from imagen.trainer import latest_checkpoint, load_checkpoint, write_shards


def test_train_reads_shards_with_loader_settings(tmp_path, tiny_t5, image_folder, capsys):
    index = write_shards(image_folder, tmp_path / "shards", samples_per_shard=2)
    config = tiny_config(tiny_t5, image_folder, tmp_path / "checkpoints")
    config["dataset"].update(folder="./does-not-exist", shards=str(index))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert run_cli("train", "--config", str(path), "--unet", "2", "--steps", "2", "--dataset.num_workers", "1",
                   "--dataset.prefetch_factor", "2") == 0
    assert load_checkpoint(latest_checkpoint(tmp_path / "checkpoints")).trainer_state["steps"] == [0, 2]
    assert run_cli("train", "--config", str(path), "--steps", "1", "--dataset.prefetch_factor", "2") == 2
    assert "prefetch_factor" in capsys.readouterr().err  # needs workers: one line naming it
    config["dataset"]["shards"] = str(tmp_path / "nothing-{0..3}.tar")
    path.write_text(json.dumps(config))
    assert run_cli("train", "--config", str(path), "--steps", "1") == 2
