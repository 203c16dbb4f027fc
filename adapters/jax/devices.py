"""Several JAX devices on one CPU, for the synchronized-BN clauses (replicas.md, sync.*).

A Flax BatchNorm with ``axis_name`` synchronizes over the devices of a mesh: the ``sync.*``
checks put each replica on its own device, K = 1 to :data:`DEVICES`. On a machine with
one CPU, XLA makes several host devices when ``XLA_FLAGS`` holds
``--xla_force_host_platform_device_count=N``, read once, when JAX starts.

The command line adds ``--xla_force_host_platform_device_count=4`` to ``XLA_FLAGS`` for
the processes it runs, keeping the user's other flags, unless the user named a device count
there already. It only sets the environment variable, before JAX is imported: a process
that imported JAX already keeps its devices (the JAX adapters then report the ``sync.*``
clauses not applicable, saying how to get the devices).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: The devices the sync.* checks use: one per replica.
DEVICES = 4
#: XLA's flag for the number of host (CPU) devices.
FLAG = "--xla_force_host_platform_device_count"


def how_to_get_them() -> str:
    """The advice given where fewer than :data:`DEVICES` devices exist."""
    return (
        f"set XLA_FLAGS={FLAG}={DEVICES} before JAX is imported (normspec's command line "
        "does, unless XLA_FLAGS names a device count)"
    )


def enable(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Ask XLA for :data:`DEVICES` host devices; whether ``XLA_FLAGS`` was changed (not
    where the user named a device count there)."""
    flags = environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return False
    environ["XLA_FLAGS"] = f"{flags} {FLAG}={DEVICES}".strip()
    return True
