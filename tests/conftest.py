"""Hypothesis settings profiles for normspec's own test suite.

``HYPOTHESIS_PROFILE=ci`` (used by .ci/run): derandomized and deterministic.
``dev`` (the default): random, fewer examples. ``thorough``: for long runs before a release.
"""

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

from normspec import storage
from normspec.adapters.jax import devices as jax_devices  # imports no framework

# The command line's persistent compilation cache (normspec.adapters.jax.compile_cache) stays out of the
# test runs: tests that run the CLI in-process must not write into the home directory.
os.environ.setdefault("NORMSPEC_COMPILATION_CACHE", "off")
# Nor Hypothesis's files (normspec.storage): they stay in the checkout's .hypothesis/.
os.environ.setdefault(storage.HYPOTHESIS_SETTING, str(Path(__file__).parents[1] / ".hypothesis"))
# One process per check run from the command line: pytest -n already keeps the cores busy
# (tests/conformance/test_lanes.py spreads runs on purpose).
os.environ.setdefault("NORMSPEC_JOBS", "1")
# Four host devices for the sync.* checks of the JAX adapters, asked for before anything
# imports JAX, as the command line does; a device count in the user's XLA_FLAGS is kept.
jax_devices.enable()

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=200, derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", max_examples=60, **_COMMON)
settings.register_profile("thorough", max_examples=2000, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
