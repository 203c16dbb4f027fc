"""Draws that depend on the seed alone, never on the source code around the check.

Hypothesis mixes constants into its draws: 15 % of the floats and 5 % of the integers it
draws are taken from a pool that includes every numeric literal of the *local* modules
loaded in the process (the user's project, an editable install of normspec itself), read
from their source files (and cached in a ``.hypothesis/constants`` folder). For a user's own
property tests that is a good bet; for normspec it means that the examples of a seed, and so
the minimal example and the reproduce command of a failure, change with the code of the
project normspec happens to run in: a constant added to an unrelated module of the user's
package changed the examples of ``normspec check`` at the same seed. Within
:func:`seeded_draws`, Hypothesis's pool holds its own global constants only.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any


@functools.cache
def _global_only_cache() -> Any:
    """Hypothesis's cache of the constants allowed per kind of draw, for the draws within
    :func:`seeded_draws`: one for the process, shared by every check's runs (there its pool
    is Hypothesis's global constants, so what it holds depends on the kind of draw alone)."""
    from hypothesis.internal.cache import LRUCache

    return LRUCache(4096)


@contextlib.contextmanager
def seeded_draws() -> Iterator[None]:
    """Within the block, Hypothesis draws no constants of local modules (see the module).

    Hypothesis's providers look the pool up through ``_get_local_constants`` and cache the
    constants allowed per kind of draw in ``CONSTANTS_CACHE``, both module attributes: the
    block replaces them (a cache filled outside, by a user's own tests in the same process,
    would hold local constants) with a cache of its own, kept from block to block, and
    restores them after.
    """
    from hypothesis.internal.conjecture import providers
    from hypothesis.internal.constants_ast import Constants

    none = Constants()
    saved = providers._get_local_constants, providers.CONSTANTS_CACHE
    providers._get_local_constants = lambda: none
    providers.CONSTANTS_CACHE = _global_only_cache()
    try:
        yield
    finally:
        providers._get_local_constants, providers.CONSTANTS_CACHE = saved
