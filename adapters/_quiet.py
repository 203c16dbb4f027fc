"""A library's start-up noise, kept out of normspec's output.

TensorFlow's native libraries write to the process's standard error (file descriptor 2) as
they load and as they look for GPUs: ``oneDNN custom operations are on ...``, ``Could not
find cuda drivers ...``, ``failed call to cuInit: ... UNKNOWN ERROR (303)``, through absl's
logging, which ``TF_CPP_MIN_LOG_LEVEL`` no longer reaches. None of it is about the
implementation under test, yet it lands in a user's terminal, CI log and pytest output.
While a target's library starts (the target's module is imported, a framework adapter
imports its framework and finds its devices), normspec holds file descriptor 2 back and
drops what was written there; what was held is printed after all if the start-up fails.
``NORMSPEC_LIBRARY_LOGS=1`` lets it through.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

#: The environment variable that lets a library's start-up output through (``1``).
SETTING = "NORMSPEC_LIBRARY_LOGS"


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the user asked to see the libraries' start-up output."""
    return environ.get(SETTING, "").strip().lower() in ("1", "true", "yes", "on")


@contextmanager
def quiet_startup() -> Iterator[None]:
    """Hold back what is written to file descriptor 2 inside the block (see the module)."""
    if wanted():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no standard error to redirect
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))
                sys.stderr.flush()
