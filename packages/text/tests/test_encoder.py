"""T5Encoder on a tiny real T5: round trip through save_pretrained, masks, padding, batching, dtypes."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.text import T5Encoder, TextEncoder, get_encoded_dim, release_text_encoders, t5_encode_text
from imagen.text.testing import DEFAULT_WORDS, build_tiny_t5, make_tiny_t5

CAPTIONS = ["a cat", "the red dog sitting on a blue mat", "owl", "a painting of a sleeping fox at night"]
words = st.lists(st.sampled_from(DEFAULT_WORDS), min_size=1, max_size=12).map(" ".join)


def in_memory_embeddings(texts, **kwargs):
    """The oracle: the in-memory model and tokenizer, run directly, before anything is saved."""
    model, tokenizer = make_tiny_t5(**kwargs)
    tokens = tokenizer(texts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    mask = tokens["attention_mask"].bool()
    return hidden.masked_fill(~mask[..., None], 0.0), mask


def test_round_trip_through_save_pretrained_is_exact(tiny_t5):
    expected, expected_mask = in_memory_embeddings(CAPTIONS)
    embeds, mask = T5Encoder(tiny_t5, batch_size=len(CAPTIONS)).encode(CAPTIONS)
    assert torch.equal(mask, expected_mask)
    assert torch.equal(embeds, expected)


def test_same_seed_writes_the_same_model_and_spares_the_global_rng(tmp_path):
    state = torch.random.get_rng_state()
    a = build_tiny_t5(tmp_path / "a", seed=3)
    b = build_tiny_t5(tmp_path / "b", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert get_encoded_dim(a) == 32


def test_satisfies_the_text_encoder_protocol(tiny_encoder):
    assert isinstance(tiny_encoder, TextEncoder)
    assert tiny_encoder.dim == 32


@given(texts=st.lists(words, min_size=1, max_size=5))
def test_mask_marks_exactly_the_real_tokens_and_padding_is_zero(tiny_encoder, texts):
    embeds, mask = tiny_encoder.encode(texts)
    real = torch.tensor([len(text.split()) + 1 for text in texts])  # one token per known word, plus </s>
    assert embeds.shape == (len(texts), int(real.max()), 32) and mask.dtype == torch.bool
    assert torch.equal(mask.sum(1), real)
    assert torch.equal(mask, torch.arange(int(real.max())) < real[:, None])
    assert torch.all(embeds[~mask] == 0)
    assert torch.all(embeds[mask].abs().sum(-1) > 0)


@given(order=st.permutations(range(len(CAPTIONS))))
def test_batch_order_does_not_change_any_caption(tiny_encoder, order):
    embeds, mask = tiny_encoder.encode(CAPTIONS)
    shuffled, shuffled_mask = tiny_encoder.encode([CAPTIONS[i] for i in order])
    assert torch.equal(shuffled_mask, mask[list(order)])
    # equal up to float32 rounding: padded keys change the length of the softmax sums
    torch.testing.assert_close(shuffled, embeds[list(order)], rtol=1e-5, atol=1e-5)


def test_batch_size_and_company_do_not_change_a_caption(tiny_t5, tiny_encoder):
    one_by_one = T5Encoder(tiny_t5, batch_size=1)
    embeds, mask = tiny_encoder.encode(CAPTIONS)
    for i, text in enumerate(CAPTIONS):
        alone, alone_mask = one_by_one.encode([text])
        n = int(alone_mask.sum())
        assert torch.equal(mask[i, :n], alone_mask[0]) and not mask[i, n:].any()
        torch.testing.assert_close(embeds[i, :n], alone[0], rtol=1e-5, atol=1e-5)
    batched, batched_mask = one_by_one.encode(CAPTIONS)  # four batches of one, padded to the longest
    assert torch.equal(batched_mask, mask)
    torch.testing.assert_close(batched, embeds, rtol=1e-5, atol=1e-5)


def test_truncates_to_max_length(tiny_t5):
    long = " ".join(["cat"] * 50)
    embeds, mask = T5Encoder(tiny_t5, max_length=8).encode([long, "a dog"])
    assert embeds.shape == (2, 8, 32)
    assert mask[0].all() and mask[1].sum() == 3


@pytest.mark.parametrize("texts, index", [(["a cat", ""], 1), (["   "], 0), (["a", "b", "\n\t"], 2)])
def test_empty_or_blank_captions_are_rejected_by_index(tiny_encoder, texts, index):
    with pytest.raises(ValueError, match=rf"texts\[{index}\]"):
        tiny_encoder.encode(texts)


def test_bad_text_arguments(tiny_encoder):
    with pytest.raises(TypeError, match="wrap it in a list"):
        tiny_encoder.encode("a cat")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tiny_encoder.encode(["a cat", 3])
    with pytest.raises(ValueError, match="texts is empty"):
        tiny_encoder.encode([])


def test_float16_is_refused_and_other_arguments_checked(tiny_t5):
    with pytest.raises(ValueError, match=r"float16.*overflow"):
        T5Encoder(tiny_t5, dtype=torch.float16)
    with pytest.raises(ValueError, match="max_length=0"):
        T5Encoder(tiny_t5, max_length=0)
    with pytest.raises(ValueError, match="batch_size=0"):
        T5Encoder(tiny_t5, batch_size=0)


def test_bfloat16_runs_close_to_float32(tiny_t5, tiny_encoder):
    embeds, mask = T5Encoder(tiny_t5, dtype=torch.bfloat16).encode(CAPTIONS)
    reference, reference_mask = tiny_encoder.encode(CAPTIONS)
    assert embeds.dtype == torch.bfloat16 and torch.equal(mask, reference_mask)
    torch.testing.assert_close(embeds.float(), reference, rtol=0.1, atol=0.1)


def test_loads_lazily_once_and_releases(tiny_t5):
    encoder = T5Encoder(tiny_t5)
    assert not encoder.loaded and encoder.dim == 32 and not encoder.loaded  # dim from config.json only
    first = encoder.encode(CAPTIONS)
    model = encoder._model
    encoder.encode(CAPTIONS[:1])
    assert encoder._model is model
    encoder.release()
    assert not encoder.loaded
    again = encoder.encode(CAPTIONS)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_outputs_carry_no_autograd_history(tiny_encoder):
    embeds, _ = tiny_encoder.encode(CAPTIONS[:1])
    assert not embeds.requires_grad


def test_progress_bar_can_be_turned_on(tiny_t5, capsys):
    T5Encoder(tiny_t5, batch_size=1, progress=True).encode(CAPTIONS)
    assert "T5 encoding" in capsys.readouterr().err
    T5Encoder(tiny_t5, batch_size=1).encode(CAPTIONS)
    assert "T5 encoding" not in capsys.readouterr().err


def test_progress_false_silences_transformers_loading_bars_and_restores_the_switch(tiny_t5, capfd):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    T5Encoder(tiny_t5).load()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()
    T5Encoder(tiny_t5, progress=True).load()
    assert "Loading weights" in capfd.readouterr().err


def test_t5_encode_text_matches_the_encoder_and_reuses_it(tiny_t5, tiny_encoder):
    from imagen.text import encoder as encoder_module

    release_text_encoders()
    embeds, mask = t5_encode_text(CAPTIONS, tiny_t5, return_attn_mask=True)
    again = t5_encode_text(CAPTIONS[:2], tiny_t5, return_attn_mask=True)
    assert torch.equal(t5_encode_text(CAPTIONS, tiny_t5), embeds)
    assert len(encoder_module._ENCODERS) == 1
    expected, expected_mask = tiny_encoder.encode(CAPTIONS)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(embeds, expected, rtol=1e-5, atol=1e-5)
    assert again[0].shape[1] == int(again[1].sum(1).max())
    release_text_encoders()
    assert not encoder_module._ENCODERS


def _damage(folder, case):
    if case == "garbage pytorch_model.bin":
        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(b"not a torch.save file " * 4)
    elif case == "empty pytorch_model.bin":
        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(b"")
    elif case == "truncated model.safetensors":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[:100])
    elif case == "tokenizer.json without its fields":
        (folder / "tokenizer.json").write_text("{}")
    elif case == "config.json not JSON":
        (folder / "config.json").write_text("{not json")


@pytest.mark.parametrize("case", ["garbage pytorch_model.bin", "empty pytorch_model.bin", "truncated model.safetensors",
                                  "tokenizer.json without its fields", "config.json not JSON"])
def test_a_damaged_folder_is_one_clear_error_naming_it(tiny_t5, tmp_path, case):
    import shutil

    from imagen.text import TextEncoderLoadError

    folder = tmp_path / "t5"
    shutil.copytree(tiny_t5, folder)
    _damage(folder, case)
    with pytest.raises(TextEncoderLoadError, match=r"cannot load the (tokenizer|model) of text encoder") as info:
        T5Encoder(folder).encode(["a puppy"])
    assert str(folder) in str(info.value) and isinstance(info.value, OSError) and isinstance(info.value, ValueError)
