"""The config's tracking, sampling, validation and schedule keys: accepted, passed where they
belong, and refused with a message naming the key."""

import pytest

from imagen.cli.config import CliConfig


def config(trainer=None, dataset=None, condition_on_text=True):
    imagen = {"kind": "Imagen", "unets": [{"dim": 8, "dim_mults": [1, 2]}], "image_sizes": [8],
              "condition_on_text": condition_on_text}
    return CliConfig.from_dict({"imagen": imagen, "trainer": trainer or {}, "dataset": dataset or {}})


def test_tracking_keys_reach_the_trainer_and_the_loop_keys_stay_out():
    parsed = config(trainer=dict(log_with="tensorboard", project_dir="runs", log_every=5, sample_every=10,
                                 sample_prompts=["a red circle"], sample_steps=4, validate_every=20, valid_batches=2,
                                 split_valid_from_train=True, split_valid_fraction=0.1, lr_scheduler="cosine"))
    kwargs = parsed.trainer.trainer_kwargs()
    assert {k: kwargs[k] for k in ("log_with", "project_dir", "log_every", "lr_scheduler", "split_valid_from_train",
                                   "split_valid_fraction")} == dict(
        log_with="tensorboard", project_dir="runs", log_every=5, lr_scheduler="cosine", split_valid_from_train=True,
        split_valid_fraction=0.1)
    assert not set(parsed.trainer.FIT_KEYS) & set(kwargs)
    assert parsed.trainer.sample_prompts == ("a red circle",)
    assert CliConfig.from_dict(parsed.to_dict()) == parsed  # JSON round trip


def test_without_a_tracker_no_project_dir_is_passed():
    kwargs = config().trainer.trainer_kwargs()
    assert kwargs["log_with"] is None and "project_dir" not in kwargs


def test_log_with_takes_a_list_and_lr_scheduler_one_per_unet():
    parsed = config(trainer=dict(log_with=["tensorboard", "wandb"], lr_scheduler=[None]))
    assert parsed.trainer.log_with == ("tensorboard", "wandb") and parsed.trainer.lr_scheduler == (None,)


@pytest.mark.parametrize(
    ("trainer", "dataset", "text", "match"),
    [
        (dict(validate_every=5), {}, True, "trainer.validate_every needs held-out data"),
        (dict(validate_every=5, split_valid_from_train=True), dict(valid_folder="v"), True, "set one"),
        (dict(sample_every=5, sample_prompts=["a"]), {}, True, "trainer.sample_every needs trainer.log_with"),
        (dict(sample_every=5, log_with="tensorboard"), {}, True, "give trainer.sample_prompts"),
        (dict(sample_prompts=["a"]), {}, False, "does not condition on text"),
        (dict(sample_prompts=["a", ""]), {}, True, "trainer.sample_prompts must be"),
        (dict(log_with=3), {}, True, "trainer.log_with must be"),
        (dict(log_with=[]), {}, True, "trainer.log_with must be"),
        (dict(log_every=0), {}, True, "trainer.log_every"),
        (dict(sample_every=0), {}, True, "trainer.sample_every"),
        (dict(split_valid_fraction=1.5), {}, True, "trainer.split_valid_fraction"),
        (dict(lr_scheduler=3), {}, True, "trainer.lr_scheduler"),
        ({}, dict(valid_folder=""), True, "dataset.valid_folder"),
        (dict(tracker="tensorboard"), {}, True, "unknown trainer keys"),
    ],
)
def test_bad_tracking_keys_are_named(trainer, dataset, text, match):
    with pytest.raises(ValueError, match=match):
        config(trainer=trainer, dataset=dataset, condition_on_text=text)
