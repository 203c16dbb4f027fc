"""The persistent compilation cache of the frameworks that compile per input shape.

JAX compiles one XLA program per (layer configuration, operation, input shape, dtype), and
Hypothesis draws a new shape for most examples: compilation is most of a Flax check's time
(``benchmarks/jax_compile.py``). The examples of a seed are the same from run to run, so
with JAX's persistent compilation cache a repeated check (the CI of a library, a developer
re-running a failure) compiles nothing it compiled before.

The command line turns the cache on for the processes it runs, in
``$XDG_CACHE_HOME/normspec/jax`` (``~/.cache/normspec/jax``), unless the user configured
JAX's cache already (``JAX_COMPILATION_CACHE_DIR``) or set ``NORMSPEC_COMPILATION_CACHE``
to ``off`` (or to another directory). It only sets environment variables, before JAX is
imported: a process that imported JAX already keeps its own configuration.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from normspec import storage

#: The variable that turns the cache off (``off``) or moves it (a directory).
SETTING = "NORMSPEC_COMPILATION_CACHE"


def default_directory(environ: MutableMapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/normspec/jax``, ``~/.cache/normspec/jax`` without XDG_CACHE_HOME."""
    return storage.cache_home(environ) / "jax"


def enable(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Point JAX's persistent cache at normspec's directory; the directory, or ``None``
    where the user turned it off or configured JAX's cache themselves."""
    setting = environ.get(SETTING, "").strip()
    if setting.lower() == "off" or "JAX_COMPILATION_CACHE_DIR" in environ:
        return None
    directory = Path(setting) if setting else default_directory(environ)
    environ["JAX_COMPILATION_CACHE_DIR"] = str(directory)
    # every program: a check's programs are small and compile in well under a second
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    return directory
