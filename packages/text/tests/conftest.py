"""Shared fixtures: one tiny T5 written to disk per test session, and the encoder that loads it."""

import pytest

from imagen.text import T5Encoder
from imagen.text.testing import build_tiny_t5


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """Folder of a tiny T5 (d_model 32) saved with save_pretrained."""
    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_t5):
    """A T5Encoder over the tiny T5, loaded once for the session."""
    return T5Encoder(tiny_t5, batch_size=4).load()


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache and HF_HUB_OFFLINE=1: no test can reach the network."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf-home" / "hub"
