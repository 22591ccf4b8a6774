"""Set-up for the equivalence tests against imagen-pytorch 2.1.0 (``nox -s reference``).

Before the reference is imported: its stand-in modules go on ``sys.path``, and an offline
Hugging Face cache holds the ``config.json`` of ``google/t5-v1_1-base`` (the reference reads it at
import time to learn the text embedding width).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
_CACHE = Path(tempfile.mkdtemp(prefix="imagen-reference-hf-"))
os.environ["HF_HOME"] = str(_CACHE)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _lay_out_t5_config(name: str = "google/t5-v1_1-base") -> None:
    """Write the real t5-v1_1-base encoder shape into the cache layout huggingface_hub reads."""
    from transformers import T5Config

    revision = "0" * 40
    repo = _CACHE / "hub" / ("models--" + name.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    T5Config(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, vocab_size=32128,
             feed_forward_proj="gated-gelu", tie_word_embeddings=False).to_json_file(snapshot / "config.json")


_lay_out_t5_config()

# transformers probes for torchvision when its modelling code is first imported; load that code
# before the stand-in is on the path so that transformers never mistakes it for the real package.
import transformers.modeling_utils  # noqa: E402, F401
from transformers import T5EncoderModel  # noqa: E402, F401

sys.path.insert(0, str(HERE / "standins"))
sys.path.insert(0, str(HERE))
