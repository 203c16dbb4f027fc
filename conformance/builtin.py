"""The built-in implementations ``normspec report`` checks, each with the profile it claims.

One table, :data:`BUILTIN_TARGETS`, collected from the adapter packages' declarations: the
reference always, and every framework target whose framework is installed. A target whose
framework is missing, or whose adapter is not (yet) there, is reported as not checked, with
the reason.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from normspec.adapters.declarations import BuiltinTarget, collected
from normspec.adapters.protocol import Implementation

if TYPE_CHECKING:
    from normspec.conformance.isolation import Isolation

#: The profile every implementation is also checked under: the paper's semantics.
PAPER = "paper"


#: The targets ``normspec report`` checks, each under the profile it claims: the reference,
#: then every adapter package's reported targets (declared in the package,
#: :mod:`normspec.adapters.declarations`).
BUILTIN_TARGETS: tuple[BuiltinTarget, ...] = tuple(t for t in collected().targets if t.reported)


def missing_frameworks(entry: BuiltinTarget) -> list[str]:
    """The frameworks of ``entry`` that are not installed (found without importing them)."""
    missing = []
    for name in entry.frameworks:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def unavailable_reason(entry: BuiltinTarget) -> str | None:
    """Why ``entry`` cannot be checked here without importing anything, or ``None``."""
    missing = missing_frameworks(entry)
    if missing:
        return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
    return None


def load_builtin(
    entry: BuiltinTarget,
    profile: str,
    isolation: Isolation | None = None,
    *,
    timeout: float = 60.0,
) -> Implementation:
    """The implementation of ``entry`` checked under ``profile``, in a worker process started
    as ``isolation`` says (``None``: in this process); ``TargetError`` otherwise."""
    from normspec.adapters.registry import TargetError, looks_like_target
    from normspec.conformance.isolation import load_implementation

    if not looks_like_target(entry.target):
        raise TargetError(f"this normspec has no adapter for {entry.title} yet")
    return load_implementation(entry.target, profile, isolation, timeout=timeout)


def find_builtin(name: str) -> BuiltinTarget | None:
    """The built-in row whose target or label is ``name``."""
    return next((e for e in BUILTIN_TARGETS if name in (e.target, e.label)), None)
