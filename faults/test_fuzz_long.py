"""The packages' hypothesis fuzz suites with more examples (``IMAGEN_FUZZ_SCALE``: 5, or 25 with
``--long``); the normal test suites run the same tests at scale 1. Each package runs in its own
pytest process (its conftest and helpers), and prints its counts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FUZZ_SUITES = ["unets", "cascade", "trainer", "cli"]


@pytest.mark.parametrize("package", FUZZ_SUITES)
def test_fuzz_suite_with_more_examples(package, long):
    env = {**os.environ, "IMAGEN_FUZZ_SCALE": "25" if long else "5"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", f"packages/{package}/tests/test_fuzz.py", "-q", "-s",
         "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    counts = [line for line in run.stdout.splitlines() if " fuzz: " in line]
    print(f"\n{package} (IMAGEN_FUZZ_SCALE={env['IMAGEN_FUZZ_SCALE']}): {counts[-1] if counts else 'no counts'}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
