"""Makes imagen-pytorch 2.1.0 importable offline beside our packages (tests and benchmarks).

``prepare()`` must run before the reference is imported: it lays out an offline Hugging Face
cache holding the ``config.json`` of ``google/t5-v1_1-base`` (the reference reads it at import
time to learn the text width) and puts the stand-ins for ``torchvision`` and ``datasets`` on
``sys.path``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
T5_NAME = "google/t5-v1_1-base"


def _lay_out_t5_config(cache: Path) -> None:
    """Write the real t5-v1_1-base encoder shape where huggingface_hub looks for a cached repo."""
    from transformers import T5Config

    revision = "0" * 40
    repo = cache / "hub" / ("models--" + T5_NAME.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    T5Config(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, vocab_size=32128,
             feed_forward_proj="gated-gelu", tie_word_embeddings=False).to_json_file(snapshot / "config.json")


def prepare() -> None:
    """Idempotent: offline HF cache with the T5 config, then the stand-ins on ``sys.path``."""
    if str(HERE / "standins") in sys.path:
        return
    cache = Path(tempfile.mkdtemp(prefix="imagen-reference-hf-"))
    os.environ["HF_HOME"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    _lay_out_t5_config(cache)
    # transformers probes for torchvision when its modelling code is first imported: load that
    # code before the stand-in is on the path so that it never mistakes the stand-in for the real one.
    import transformers.modeling_utils  # noqa: F401
    from transformers import T5EncoderModel  # noqa: F401

    sys.path.insert(0, str(HERE / "standins"))
