"""Hypothesis settings profiles for normspec's own test suite.

``HYPOTHESIS_PROFILE=ci`` (used by .ci/run): derandomized and deterministic.
``dev`` (the default): random, fewer examples. ``thorough``: for long runs before a release.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=200, derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", max_examples=60, **_COMMON)
settings.register_profile("thorough", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
