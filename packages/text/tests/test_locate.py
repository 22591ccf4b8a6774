"""Offline-first loading: local folders, the Hugging Face cache, and fast, clear failures without the hub."""

import shutil
import time

import pytest
import torch

from imagen.text import KNOWN_DIMS, T5Encoder, TextEncoderNotFoundError, get_encoded_dim
from imagen.text import locate as locate_module
from imagen.text.testing import add_to_hf_cache

# A bound on how long a failure may take: far below a network timeout (tens of seconds or minutes).
FAST_S = 15.0


def fails_fast(make_and_encode, match):
    start = time.monotonic()
    with pytest.raises(TextEncoderNotFoundError, match=match) as raised:
        make_and_encode()
    assert time.monotonic() - start < FAST_S
    return str(raised.value)


def test_offline_uncached_name_fails_fast_with_the_clear_error(offline_hub):
    message = fails_fast(lambda: T5Encoder("google/t5-v1_1-base").encode(["a cat"]), "HF_HUB_OFFLINE is set")
    for hint in ("config.json", "model.safetensors", "tokenizer.json", "HF_HOME", "save_pretrained", str(offline_hub)):
        assert hint in message
    assert isinstance(TextEncoderNotFoundError("x"), ValueError | FileNotFoundError)


def test_local_files_only_never_tries_the_hub(offline_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(locate_module, "hub_reachable", pytest.fail)  # must not even probe
    fails_fast(lambda: T5Encoder("t5-small", local_files_only=True).load(), "local_files_only=True")


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "https://huggingface.invalid"])
def test_unreachable_hub_fails_fast_without_offline_mode(offline_hub, monkeypatch, endpoint):
    # refused and unresolvable endpoints: one short probe, then the clear error
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    fails_fast(lambda: T5Encoder("imagen-test/not-a-model").encode(["a cat"]), "hub cannot be reached")


def test_a_hanging_hub_is_given_up_after_the_probe_timeout(offline_hub, monkeypatch):
    # a black-holed endpoint: connecting (or resolving) never returns; the probe gives up on time
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(locate_module, "HUB_PROBE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(locate_module.socket, "create_connection", lambda *args, **kwargs: time.sleep(3600))
    fails_fast(lambda: T5Encoder("imagen-test/not-a-model").encode(["a cat"]), "hub cannot be reached")


def test_a_failed_download_gives_the_clear_error(offline_hub, monkeypatch):
    # the probe passes but the one download attempt fails (here: transformers itself is told to stay offline)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(locate_module, "hub_reachable", lambda timeout=None: True)
    from transformers import AutoTokenizer

    def refuse(*args, **kwargs):
        raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)
    message = fails_fast(lambda: T5Encoder("imagen-test/not-a-model").load(), "the download failed")
    assert "HF_HOME" in message


def test_hub_name_found_in_the_cache_loads_offline(offline_hub, tiny_t5, tiny_encoder):
    add_to_hf_cache(tiny_t5, "imagen-test/tiny-t5", offline_hub)
    assert get_encoded_dim("imagen-test/tiny-t5") == 32
    encoder = T5Encoder("imagen-test/tiny-t5")
    embeds, mask = encoder.encode(["a cat on a mat", "dog"])
    expected, expected_mask = T5Encoder(tiny_t5).encode(["a cat on a mat", "dog"])
    assert torch.equal(mask, expected_mask) and torch.equal(embeds, expected)


def test_explicit_cache_dir_is_used(offline_hub, tmp_path, tiny_t5):
    add_to_hf_cache(tiny_t5, "imagen-test/elsewhere", tmp_path / "other-cache")
    assert T5Encoder("imagen-test/elsewhere", cache_dir=tmp_path / "other-cache").load().dim == 32
    fails_fast(lambda: T5Encoder("imagen-test/elsewhere").load(), "imagen-test/elsewhere")


def test_incomplete_local_folder_names_the_missing_files(offline_hub, tiny_t5, tmp_path):
    partial = shutil.copytree(tiny_t5, tmp_path / "partial")
    (partial / "model.safetensors").unlink()
    message = fails_fast(lambda: T5Encoder(partial).load(), "the folder is incomplete")
    assert "model.safetensors" in message and "config.json" not in message.split("Missing from")[1].split("\n")[0]


def test_a_path_that_is_no_folder_and_no_hub_name(offline_hub, tmp_path):
    fails_fast(lambda: T5Encoder(tmp_path / "nowhere" / "t5").load(), "not an existing folder, nor a hub name")


def test_only_spiece_model_mentions_sentencepiece(offline_hub, tiny_t5, tmp_path):
    folder = shutil.copytree(tiny_t5, tmp_path / "spm-only")
    (folder / "tokenizer.json").unlink()
    (folder / "spiece.model").write_bytes(b"not a real sentencepiece model")
    with pytest.raises(TextEncoderNotFoundError, match="sentencepiece"):
        T5Encoder(folder).load()


@pytest.mark.parametrize("name, dim", [("t5-small", 512), ("t5-base", 768), ("t5-large", 1024),
                                       ("google/t5-v1_1-base", 768), ("google/t5-v1_1-xl", 2048),
                                       ("google/t5-v1_1-xxl", 4096), ("google/flan-t5-large", 1024)])
def test_known_widths_need_no_files(offline_hub, name, dim):
    assert get_encoded_dim(name) == dim == KNOWN_DIMS[name]
    assert T5Encoder(name).dim == dim


def test_unknown_width_is_a_clear_value_error(offline_hub):
    with pytest.raises(ValueError, match="'someone/unknown-t5' is not a known T5 name"):
        get_encoded_dim("someone/unknown-t5")


def test_width_of_a_local_folder_comes_from_its_config(tiny_t5):
    assert get_encoded_dim(tiny_t5) == 32 and get_encoded_dim(str(tiny_t5)) == 32
