"""Fixtures for the cascade tests: a locally built tiny T5, a fixed global seed."""

import sys
from pathlib import Path

import pytest
import torch

from imagen.text.testing import build_tiny_t5

sys.path.insert(0, str(Path(__file__).parent))
from cascade_testing import WORDS


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A folder holding a tiny T5 encoder and its tokenizer, loaded like a real model."""
    return str(build_tiny_t5(tmp_path_factory.mktemp("t5"), words=WORDS))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
