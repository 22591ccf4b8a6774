"""Every config field as a dotted flag over a JSON or YAML file (jsonargparse over the attrs classes)."""

import json

import pytest
import yaml
from cli_testing import run_cli

from imagen.cli.config import CliConfig
from imagen.cli.typed_config import apply_overrides, fields_help


def printed_config(capsys, *argv) -> dict:
    assert run_cli("train", *argv, "--print-config") == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("flag", "value", "section", "key", "expected"), [
    ("--trainer.lr", "2e-4", "trainer", "lr", 2e-4),
    ("--trainer.lr", "[1e-4, 5e-5]", "trainer", "lr", [1e-4, 5e-5]),
    ("--trainer.log_with", "tensorboard", "trainer", "log_with", "tensorboard"),
    ("--trainer.checkpoint_layout", "folder", "trainer", "checkpoint_layout", "folder"),
    ("--dataset.batch_size", "5", "dataset", "batch_size", 5),
    ("--dataset.augment_horizontal_flip", "false", "dataset", "augment_horizontal_flip", False),
    ("--imagen.timesteps", "7", "imagen", "timesteps", 7),
    ("--imagen.cond_drop_prob", "0.3", "imagen", "cond_drop_prob", 0.3),
    ("--imagen.unets", '[{"dim": 8, "dim_mults": [1, 2]}, {"dim": 4, "dim_mults": [1, 2]}]', "imagen", "unets", None),
])
def test_each_section_takes_dotted_overrides(config_file, capsys, flag, value, section, key, expected):
    config = printed_config(capsys, "--config", str(config_file), flag, value)
    if key == "unets":
        assert [u["dim"] for u in config["imagen"]["unets"]] == [8, 4]
    else:
        assert config[section][key] == expected
    untouched = json.loads(config_file.read_text())
    assert config["dataset"]["folder"] == untouched["dataset"]["folder"]  # the file's other values stay


def test_yaml_and_json_files_give_the_same_config(config_file, tmp_path, capsys):
    as_yaml = tmp_path / "config.yaml"
    as_yaml.write_text(yaml.safe_dump(json.loads(config_file.read_text())))
    flags = ["--trainer.lr", "3e-4"]
    assert printed_config(capsys, "--config", str(as_yaml), *flags) == printed_config(
        capsys, "--config", str(config_file), *flags)
    assert run_cli("train", "--config", str(as_yaml), "--steps", "1", *flags) == 0  # and trains


def test_every_field_of_every_section_has_a_flag():
    text = fields_help("Imagen") + fields_help("ElucidatedImagen")
    import attrs

    from imagen.cascade import ElucidatedImagenConfig, ImagenConfig
    from imagen.cli.config import DatasetConfig, TrainerConfig

    for section, cls in (("imagen", ImagenConfig), ("imagen", ElucidatedImagenConfig), ("trainer", TrainerConfig),
                         ("dataset", DatasetConfig)):
        for field in attrs.fields(cls):
            assert f"--{section}.{field.name}" in text, (section, field.name)


@pytest.mark.parametrize(("argv", "message"), [
    (["--trainer.lrr", "1"], "unrecognized arguments"),
    (["--imagen.timesteps", "ten"], "imagen.timesteps"),
    (["--trainer.lr", "-1"], "trainer.lr must be a positive number"),
    (["--dataset.batch_size", "0"], "dataset.batch_size"),
])
def test_bad_flags_are_one_line_and_write_nothing(config_file, tmp_path, capsys, argv, message):
    assert run_cli("train", "--config", str(config_file), "--steps", "1", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "checkpoints").exists()


def test_flags_outside_config_commands_are_refused(capsys):
    assert run_cli("sample", "a cat", "--trainer.lr", "1") == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_a_bad_yaml_file_names_itself(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("imagen: [unclosed\n")
    assert run_cli("train", "--config", str(path)) == 2
    assert "broken.yaml" in capsys.readouterr().err


def test_overrides_validate_like_the_file(config_file):
    document = json.loads(config_file.read_text())
    merged = apply_overrides(document, ["--trainer.sample_every", "5"])
    with pytest.raises(ValueError, match="sample_every needs"):
        CliConfig.from_dict(merged)
