"""Caches built in parts (one per process) merge into the cache one build gives; stored dtypes."""

import pytest
import torch

import imagen.text.cache as cache_module
from imagen.text import CorruptCacheError, TextEmbeddingCache
from imagen.text.testing import HashTextEncoder

CAPTIONS = [f"caption {i} " + "word " * (i % 5) for i in range(17)]


def test_parts_merge_into_the_single_build(tmp_path):
    encoder = HashTextEncoder(dim=8)
    whole = TextEmbeddingCache.build(tmp_path / "whole", CAPTIONS, encoder, shard_size=4)
    for rank in range(3):  # as three processes would, each with its share of the distinct captions
        part = TextEmbeddingCache.build(tmp_path / "merged", CAPTIONS + CAPTIONS[:2], encoder, shard_size=4,
                                        part=(rank, 3))
        assert len(part) == len(CAPTIONS[rank::3])
    merged = TextEmbeddingCache.merge(tmp_path / "merged", remove_sources=True)
    assert sorted(merged.captions) == sorted(CAPTIONS) and len(merged) == len(CAPTIONS)
    for got, expected in zip(merged.lookup(CAPTIONS), whole.lookup(CAPTIONS)):
        assert torch.equal(got, expected)
    assert not list((tmp_path / "merged").glob("part-*"))
    merged.verify()


def test_merge_refuses_incomplete_parts_and_mismatched_caches(tmp_path):
    TextEmbeddingCache.build(tmp_path / "run", CAPTIONS, HashTextEncoder(dim=8), part=(0, 2))
    with pytest.raises(ValueError, match="incomplete"):
        TextEmbeddingCache.merge(tmp_path / "run")
    other = TextEmbeddingCache.build(tmp_path / "wide", CAPTIONS[:3], HashTextEncoder(dim=4))
    with pytest.raises(ValueError, match="dim"):
        TextEmbeddingCache.merge(tmp_path / "out", [tmp_path / "run" / "part-00000-of-00002", other.folder])
    with pytest.raises(ValueError, match=r"part=\(2, 2\)"):
        TextEmbeddingCache.build(tmp_path / "bad", CAPTIONS, HashTextEncoder(dim=8), part=(2, 2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_stored_dtype_keeps_the_cast_values(tmp_path, dtype):
    encoder = HashTextEncoder(dim=8)
    cache = TextEmbeddingCache.build(tmp_path, CAPTIONS, encoder, store_dtype=dtype)
    embeds, mask = cache.lookup(CAPTIONS[:4])
    expected, expected_mask = encoder.encode(CAPTIONS[:4])
    assert cache.dtype == dtype and embeds.dtype == dtype and torch.equal(mask, expected_mask[:, : mask.shape[1]])
    assert torch.equal(embeds, (expected * expected_mask[..., None])[:, : mask.shape[1]].to(dtype))
    with pytest.raises(ValueError, match="store_dtype"):
        TextEmbeddingCache.build(tmp_path / "x", CAPTIONS, encoder, store_dtype=torch.int8)


def test_a_damaged_caption_table_is_refused(tmp_path):
    TextEmbeddingCache.build(tmp_path, CAPTIONS, HashTextEncoder(dim=8))
    table = tmp_path / "captions.safetensors"
    data = bytearray(table.read_bytes())
    data[-1] ^= 0xFF
    table.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError, match=r"captions\.safetensors.*SHA-256"):
        TextEmbeddingCache(tmp_path)


def test_a_key_collision_is_an_error_and_a_lookup_compares_the_text(tmp_path, monkeypatch):
    cache = TextEmbeddingCache.build(tmp_path / "ok", CAPTIONS, HashTextEncoder(dim=8))
    first_key = cache_module.caption_key(CAPTIONS[0])
    monkeypatch.setattr(cache_module, "caption_key", lambda text: first_key)  # every text collides
    with pytest.raises(ValueError, match="collision"):
        TextEmbeddingCache.build(tmp_path / "bad", CAPTIONS[:2], HashTextEncoder(dim=8))
    assert CAPTIONS[0] in cache and "not cached" not in cache  # the key of another text is not a hit
    with pytest.raises(KeyError, match="1 of 1 captions"):
        cache.lookup(["not cached"])
