"""TextEmbeddingCache: returns exactly what the encoder returns; refuses damaged shards."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.text import CorruptCacheError, TextEmbeddingCache
from imagen.text.testing import HashTextEncoder

CAPTIONS = [f"caption {i} " + "word " * (i % 7) for i in range(23)]


@pytest.fixture(scope="module")
def hashed(tmp_path_factory):
    """A cache of CAPTIONS over 5 shards, built with a batch-independent encoder."""
    encoder = HashTextEncoder(dim=8)
    cache = TextEmbeddingCache.build(tmp_path_factory.mktemp("hashed"), CAPTIONS, encoder, shard_size=5,
                                     batch_size=3)
    return cache, encoder


@given(picks=st.lists(st.integers(0, len(CAPTIONS) - 1), min_size=1, max_size=10))
def test_lookup_returns_exactly_what_the_encoder_returns(hashed, picks):
    cache, encoder = hashed
    texts = [CAPTIONS[i] for i in picks]
    calls = encoder.calls
    embeds, mask = cache.lookup(texts)
    expected, expected_mask = encoder.encode(texts)
    assert encoder.calls == calls + 1  # the lookup itself never ran the encoder
    assert torch.equal(mask, expected_mask) and torch.equal(embeds, expected)


def test_small_memory_budget_and_reopening_give_the_same_answers(hashed):
    cache, encoder = hashed
    reopened = TextEmbeddingCache(cache.folder, max_shards_in_memory=1)
    texts = CAPTIONS[::-1]
    assert torch.equal(reopened.lookup(texts)[0], encoder.encode(texts)[0])
    assert len(reopened) == len(CAPTIONS) and reopened.captions == CAPTIONS and CAPTIONS[3] in reopened
    assert reopened.dim == 8 and reopened.dtype == torch.float32 and reopened.encoder_name == "hash-8"


def test_storage_is_trimmed_to_real_lengths(hashed):
    cache, _ = hashed
    shards = cache.index["shards"]
    assert len(shards) == 5
    assert sum(s["tokens"] for s in shards) == sum(len(text.split()) for text in CAPTIONS)


def test_duplicates_are_stored_once_and_dtype_is_kept(tmp_path):
    encoder = HashTextEncoder(dim=4, dtype=torch.bfloat16)
    cache = TextEmbeddingCache.build(tmp_path, ["a b", "c", "a b"], encoder)
    assert len(cache) == 2 and cache.dtype == torch.bfloat16
    embeds, _ = cache.lookup(["a b", "a b", "c"])
    assert embeds.dtype == torch.bfloat16 and torch.equal(embeds[0], embeds[1])


def test_with_the_tiny_t5(tmp_path, tiny_encoder):
    texts = ["a cat", "the red dog sitting on a blue mat", "owl", "a fox at night", "a big old tree", "sky"]
    cache = TextEmbeddingCache.build(tmp_path, texts, tiny_encoder, batch_size=3, progress=True)
    for batch in (texts[:3], texts[3:]):  # the very batches the cache was built from: bit for bit
        embeds, mask = cache.lookup(batch)
        expected, expected_mask = tiny_encoder.encode(batch)
        assert torch.equal(mask, expected_mask) and torch.equal(embeds, expected)
    embeds, mask = cache.lookup(texts[::-1])  # other batches: equal up to float32 rounding
    expected, expected_mask = tiny_encoder.encode(texts[::-1])
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(embeds, expected, rtol=1e-5, atol=1e-5)


def build_small(folder):
    return TextEmbeddingCache.build(folder, CAPTIONS[:6], HashTextEncoder(dim=8), shard_size=3)


def test_a_flipped_byte_is_detected(tmp_path):
    build_small(tmp_path)
    shard = tmp_path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    cache = TextEmbeddingCache(tmp_path)
    assert cache.lookup(CAPTIONS[:3])[0].shape[0] == 3  # shard 0 is fine
    with pytest.raises(CorruptCacheError, match=r"shard-00001.*SHA-256"):
        cache.lookup(CAPTIONS[3:4])
    with pytest.raises(CorruptCacheError, match="SHA-256"):
        cache.verify()


def test_a_truncated_shard_is_detected_on_opening(tmp_path):
    build_small(tmp_path)
    shard = tmp_path / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-16])
    with pytest.raises(CorruptCacheError, match="truncated"):
        TextEmbeddingCache(tmp_path)


def test_a_damaged_shard_is_refused_even_without_hash_checks(tmp_path):
    build_small(tmp_path)
    shard = tmp_path / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:16] = b"{{{{{{{{"  # the header is no longer JSON
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError, match="cannot be read"):
        TextEmbeddingCache(tmp_path, verify=False).lookup(CAPTIONS[:1])


def test_missing_shard_or_broken_index(tmp_path):
    build_small(tmp_path)
    (tmp_path / "shard-00001.safetensors").unlink()
    with pytest.raises(CorruptCacheError, match="missing"):
        TextEmbeddingCache(tmp_path)
    (tmp_path / "index.json").write_text('{"format": ')
    with pytest.raises(CorruptCacheError, match="not valid JSON"):
        TextEmbeddingCache(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"index\.json is missing"):
        TextEmbeddingCache(tmp_path / "elsewhere")


def test_unknown_captions_and_existing_caches(tmp_path):
    cache = build_small(tmp_path)
    with pytest.raises(KeyError, match="1 of 2 captions are not in the cache"):
        cache.lookup([CAPTIONS[0], "never seen"])
    with pytest.raises(ValueError, match="overwrite=True"):
        build_small(tmp_path)
    replaced = TextEmbeddingCache.build(tmp_path, ["x y"], HashTextEncoder(dim=8), overwrite=True)
    assert replaced.captions == ["x y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.safetensors", "index.json",
                                                          "shard-00000.safetensors"]
    assert json.loads((tmp_path / "index.json").read_text())["table"]["captions"] == 1 and "x y" in replaced


def test_encoder_that_breaks_the_contract_is_refused(tmp_path):
    class LeftPadded(HashTextEncoder):
        def encode(self, texts):
            embeds, mask = super().encode(texts)
            return embeds, mask.flip(1)

    with pytest.raises(ValueError, match="right padding"):
        TextEmbeddingCache.build(tmp_path, ["a", "b c"], LeftPadded(dim=4))
