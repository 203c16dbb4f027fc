"""Where normspec keeps the files it writes besides its reports: ``~/.cache/normspec``.

``$XDG_CACHE_HOME/normspec`` (``~/.cache/normspec`` without XDG_CACHE_HOME) holds JAX's
compiled programs (:mod:`normspec.adapters.jax.compile_cache`) and Hypothesis's files. Hypothesis keeps
its files (a cache of the constants it found in the source code it runs) in a
``.hypothesis/`` folder of the current directory unless told otherwise, so ``normspec
check`` run in a user's project would leave one there: the command line points Hypothesis
at ``~/.cache/normspec/hypothesis`` instead (``HYPOTHESIS_STORAGE_DIRECTORY``), unless the
user set that variable. normspec's checks keep no example database: a seed reproduces its
report, so nothing kept there is needed to reproduce a result.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

#: Hypothesis's setting for where it keeps its files.
HYPOTHESIS_SETTING = "HYPOTHESIS_STORAGE_DIRECTORY"


def cache_home(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME/normspec``, ``~/.cache/normspec`` without XDG_CACHE_HOME."""
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "normspec"


def keep_hypothesis_files(environ: MutableMapping[str, str] = os.environ) -> Path:
    """Point Hypothesis at normspec's cache (before it first writes), unless the user chose
    a place; the directory it will use."""
    environ.setdefault(HYPOTHESIS_SETTING, str(cache_home(environ) / "hypothesis"))
    return Path(environ[HYPOTHESIS_SETTING])
