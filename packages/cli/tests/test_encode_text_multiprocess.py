"""`accelerate launch -m imagen.cli encode-text`: each process encodes its share, the main merges."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from imagen.text import TextEmbeddingCache


def _launcher() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "accelerate")
    return shutil.which("accelerate") or (beside if os.path.exists(beside) else None)


@pytest.mark.skipif(_launcher() is None, reason="accelerate CLI not installed")
def test_two_processes_write_the_cache_one_process_writes(config_file, tmp_path):
    from cli_testing import run_cli

    document = json.loads(config_file.read_text())
    document["dataset"]["text_embedding_cache"] = str(tmp_path / "one")
    config_file.write_text(json.dumps(document))
    assert run_cli("encode-text", "--config", str(config_file)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [_launcher(), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", "0", "-m", "imagen.cli", "-q", "encode-text",
         "--config", str(config_file), "--output", str(tmp_path / "two"), "--store-dtype", "bfloat16"],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("cached ") == 1  # the main process reports, once
    one, two = TextEmbeddingCache(tmp_path / "one"), TextEmbeddingCache(tmp_path / "two")
    assert sorted(two.captions) == sorted(one.captions) and two.dtype == torch.bfloat16
    assert not list((tmp_path / "two").glob("part-*"))
    embeds_one, mask_one = one.lookup(one.captions)
    embeds_two, mask_two = two.lookup(one.captions)
    assert torch.equal(mask_one, mask_two) and torch.equal(embeds_two, embeds_one.to(torch.bfloat16))
