"""The fault-injection suites (``nox -s faults``; ``--long`` for the full trial counts).

Each suite prints its counts (run pytest with ``-s`` to see them); the short versions that always
run live in ``packages/trainer/tests/test_faults_short.py``.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_addoption(parser):
    parser.addoption("--long", action="store_true", default=False,
                     help="the full trial counts (>= 50 SIGKILLs, more mutations)")


@pytest.fixture
def long(request) -> bool:
    return request.config.getoption("--long")
