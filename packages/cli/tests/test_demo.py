"""The demo learns: a reduced run (fewer steps, fewer held-out prompts) must beat chance clearly."""

from __future__ import annotations

import pytest
from cli_testing import run_cli

from imagen.cli import (
    DemoSettings,
    run_demo,
    shapes,
)


def test_demo_rejects_bad_budgets(capsys, tmp_path):
    assert run_cli("demo", "--output-dir", str(tmp_path), "--minutes", "1", "--steps", "3") == 2
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize("size", [16, 32])
def test_shapes_score_reads_true_images_back(size):
    import random

    import numpy as np
    import torch

    prompts = shapes.held_out_prompts()
    rng = random.Random(0)
    images = torch.stack([torch.from_numpy(np.array(shapes.draw(*p, size, rng))).permute(2, 0, 1) / 255
                          for p in prompts])
    assert shapes.score(images, prompts) == {"colour": 1.0, "shape": 1.0, "position": 1.0, "all": 1.0}
    assert all(not shapes.is_held_out(*t) for _, t in zip(range(50), _captions_to_triples(20)))


def _captions_to_triples(count):
    triples = []
    for _, text in shapes.training_examples(count, 8):
        words = text.split()
        triples.append((words[1], words[2], " ".join(words[5:])))
    return triples


@pytest.mark.slow
def test_reduced_demo_learns_colour_and_position(tmp_path):
    # Chance is 1/6 for colour and 1/5 for position. After REDUCED_STEPS base steps (a fraction of the
    # ~1500 the default 8-minute budget reaches on 2 quiet cores) and half as many SR steps, the 32 px
    # samples must show the right colour in at least 60% and the right position in at least 40% of the
    # held-out samples (12 prompts x 2 samples): a lower bar than the demo's 90% / 80%, far above chance.
    # One thread, whatever OMP_NUM_THREADS says: the run is then one fixed trajectory. The bar is not met
    # by every trajectory at this step count: with the thread tuner on 2 cores one CI run read position 0.29.
    summary = run_demo(DemoSettings(output_dir=tmp_path, steps=REDUCED_STEPS, dataset_size=1000, prompts=12,
                                    samples_per_prompt=2, progress=False, threads=1))
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "checkpoint.pt").is_file()
    scores = summary["scores"]["sr"]
    assert scores["colour"] >= 0.6, summary
    # the recipe's group norms: with the reference's per-pixel ChanRMSNorm this read 33% (bench/cli_demo_tune.md)
    assert scores["position"] >= 0.4, summary

REDUCED_STEPS = 450  # 300 passed with 256 text positions and failed with 16 (another init): bench/cli_demo_tune.md
