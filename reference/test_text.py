"""T5 encoding: our ``t5_encode_text`` and ``get_encoded_dim`` equal the reference's for one model.

The model is a real (tiny) T5 encoder and tokenizer built and saved locally, loaded by both
packages by folder name through transformers.
"""

import pytest
import torch
from imagen_pytorch import t5 as reference_t5
from transformers import T5Tokenizer

from imagen.text import get_encoded_dim, release_text_encoders, t5_encode_text
from imagen.text.testing import build_tiny_t5

CAPTIONS = ["a red cat", "the big dog sitting under a tree with a zebra", "zz"]


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-t5")
    build_tiny_t5(folder)
    yield str(folder)
    release_text_encoders()
    reference_t5.T5_CONFIGS.pop(str(folder), None)


@pytest.fixture(autouse=True)
def reference_tokenizer_call(monkeypatch):
    # The reference calls tokenizer.batch_encode_plus, which transformers 5 removed; calling the
    # tokenizer with the same arguments is what that method did.
    monkeypatch.setattr(T5Tokenizer, "batch_encode_plus", T5Tokenizer.__call__, raising=False)


def test_embeddings_and_masks_equal_the_reference(tiny_t5):
    expected, expected_mask = reference_t5.t5_encode_text(CAPTIONS, name=tiny_t5, return_attn_mask=True)
    embeds, mask = t5_encode_text(CAPTIONS, tiny_t5, return_attn_mask=True)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(embeds, expected, rtol=0, atol=1e-6)
    assert torch.equal(t5_encode_text(CAPTIONS, tiny_t5), embeds)  # embeds only by default, as the reference


def test_encoded_dim_equals_the_reference(tiny_t5):
    assert get_encoded_dim(tiny_t5) == reference_t5.get_encoded_dim(tiny_t5) == 32
    assert get_encoded_dim("google/t5-v1_1-base") == reference_t5.get_encoded_dim("google/t5-v1_1-base") == 768
