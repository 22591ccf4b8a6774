"""Test support shared by the packages' fuzz suites (issue 13).

Public so that every package's tests can use it (``from imagen.unets.testing import ...``); it
imports neither hypothesis nor pytest.
"""

from __future__ import annotations

import functools
import os
from collections import Counter

__all__ = ["FuzzOutcomes", "fuzz_examples"]


def fuzz_examples(count: int) -> int:
    """``count`` hypothesis examples, times ``IMAGEN_FUZZ_SCALE`` (the faults session runs more)."""
    return max(1, round(count * float(os.environ.get("IMAGEN_FUZZ_SCALE", "1"))))


class FuzzOutcomes(Counter):
    """How a fuzz module's drawn inputs ended: ``outcomes["refused"] += 1``..., with the count of
    inputs that failed their test (``counting``) and a printed summary."""

    def counting(self, test):
        """Decorates a (hypothesis) test: a drawn input that fails it is counted, then re-raised."""

        @functools.wraps(test)
        def run(*args, **kwargs):
            try:
                return test(*args, **kwargs)
            except Exception:
                self["failing inputs"] += 1
                raise

        return run

    def report(self, suite: str, unit: str = "inputs") -> int:
        """Prints the counts (run pytest with ``-s``); returns how many drawn inputs failed their test."""
        failing = self["failing inputs"]
        print(f"\n{suite} fuzz: {sum(self.values())} {unit}, {dict(self)}, {failing} failing")
        return failing
