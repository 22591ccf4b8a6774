"""Shared fixtures of the CLI tests: a tiny T5, a tiny captioned dataset and a tiny config file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from imagen.cli import shapes
from imagen.text.testing import build_tiny_t5

sys.path.insert(0, str(Path(__file__).parent))
from cli_testing import tiny_config


def pytest_collection_modifyitems(config, items):
    # The reduced demo (slow-marked, one process, ~4 minutes) first: pytest-xdist (--dist loadfile)
    # hands out files in collection order, so it starts at once on one worker and the other files
    # run beside it instead of before it. (Not done suite-wide: started together, the trainer's
    # multi-process launches oversubscribe the cores.)
    items.sort(key=lambda item: "slow" not in item.keywords)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5", words=shapes.vocabulary(), d_model=16)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    return shapes.write_dataset(tmp_path_factory.mktemp("data") / "images", 6, 16)


@pytest.fixture
def config_file(tmp_path, tiny_t5, image_folder) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_config(tiny_t5, image_folder, tmp_path / "checkpoints")))
    return path
