"""`imagen config --preset small-fast`: the recipe's cascade, trainer settings and batch as a config file."""

from __future__ import annotations

from cli_testing import run_cli

from imagen.cascade import small_fast
from imagen.cli.config import CliConfig, preset_config
from imagen.text import DEFAULT_T5_NAME


def test_config_preset_writes_the_recipe(tmp_path):
    path = tmp_path / "c.json"
    assert run_cli("config", "--preset", "small-fast", "--path", str(path)) == 0
    config = CliConfig.read(path)
    recipe = small_fast(32, text_encoder_name=DEFAULT_T5_NAME)
    assert config.imagen == recipe.config
    assert config.trainer.lr == recipe.trainer_options["lr"] and config.trainer.ema_beta == 0.99
    assert config.trainer.warmup_steps == recipe.trainer_options["warmup_steps"]
    assert config.dataset.batch_size == recipe.batch_size
    assert config == preset_config("small-fast")


def test_config_preset_image_sizes(tmp_path):
    path = tmp_path / "c.json"
    assert run_cli("config", "--preset", "small-fast", "--image-sizes", "16", "32", "--path", str(path)) == 0
    assert CliConfig.read(path).imagen.image_sizes == (16, 32)


def test_config_preset_user_errors(tmp_path, capsys):
    assert run_cli("config", "--preset", "fast", "--path", str(tmp_path / "a.json")) == 2
    assert "fast" in capsys.readouterr().err
    assert run_cli("config", "--preset", "small-fast", "--image-sizes", "24", "--path", str(tmp_path / "b.json")) == 2
    err = capsys.readouterr().err
    assert "image_sizes[0] must be a power of two >= 8, got 24" in err and "Traceback" not in err
    assert run_cli("config", "--image-sizes", "32", "--path", str(tmp_path / "c.json")) == 2
    assert "--image-sizes needs --preset" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
