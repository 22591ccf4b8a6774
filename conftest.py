"""Shared pytest set-up: hypothesis profiles and the test device.

``default`` is quick for local work; ``ci`` (chosen when CI is set, or with
HYPOTHESIS_PROFILE=ci) tries more examples, derandomized so a red run can be replayed.

``IMAGEN_TEST_DEVICE`` (default ``cpu``, e.g. ``cuda``) is where tests that take the ``device``
fixture run their models, tensors and generators, so the suite runs on a GPU unchanged; tests
marked ``cpu_only`` (CPU by nature: thread counts, gloo launches, CPU-only kernels) are skipped on
any other device.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

TEST_DEVICE = os.environ.get("IMAGEN_TEST_DEVICE", "cpu")


@pytest.fixture
def device():
    """The ``torch.device`` of ``IMAGEN_TEST_DEVICE`` (cpu unless set)."""
    import torch  # not at import: the layout session runs without torch

    device = torch.device(TEST_DEVICE)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.fail(f"IMAGEN_TEST_DEVICE={TEST_DEVICE} but CUDA is not available")
    return device


def pytest_collection_modifyitems(config, items):
    if TEST_DEVICE == "cpu":
        return
    skip = pytest.mark.skip(reason=f"CPU only by nature (IMAGEN_TEST_DEVICE={TEST_DEVICE})")
    for item in items:
        if "cpu_only" in item.keywords:
            item.add_marker(skip)

settings.register_profile(
    "default", max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))
