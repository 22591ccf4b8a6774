"""Shared pytest set-up: hypothesis profiles.

``default`` is quick for local work; ``ci`` (chosen when CI is set, or with
HYPOTHESIS_PROFILE=ci) tries more examples, derandomized so a red run can be replayed.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))
