"""eps and the momentum of a library's own layer as jit arguments, not constants.

JAX compiles one program per configuration where a layer holds eps and the momentum as
Python floats: layers of one shape that differ only in them compile again (issue 13). A
library's own BatchNorm that uses them only in arithmetic takes :class:`Setting` stand-ins
instead, traced scalars holding :func:`hyper_settings`' values, and computes bitwise what
it computes with the floats (Flax's linen and nnx BatchNorm, equinox's; each adapter tests
this against a subclass, which keeps the floats). A user's class may use them otherwise (in
Python, with ``jnp``), so it keeps the floats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from normspec.adapters.protocol import LayerConfig


class Setting:
    """eps or the momentum as a traced scalar, used as the Python float is (weakly typed):
    ``v * a`` and ``a + v`` with ``v`` rounded to ``a``'s dtype, ``v ** n`` for an integer
    array ``n`` in the scalar's dtype, and ``1 - v`` the ``complement`` computed in double
    on the host, as Python does."""

    def __init__(self, value: jax.Array, complement: jax.Array | None = None) -> None:
        self.value, self.complement = value, complement

    def __mul__(self, other: jax.Array) -> jax.Array:
        product: jax.Array = self.value.astype(other.dtype) * other
        return product

    __rmul__ = __mul__

    def __radd__(self, other: jax.Array) -> jax.Array:
        total: jax.Array = other + self.value.astype(other.dtype)
        return total

    def __pow__(self, other: jax.Array) -> jax.Array:
        power: jax.Array = self.value**other
        return power

    def __rsub__(self, other: object) -> Setting:
        if other != 1 or self.complement is None:
            raise TypeError(f"{other!r} - a traced setting: only 1 - momentum is held")
        return Setting(self.complement)


def hyper_settings(config: LayerConfig) -> dict[str, np.ndarray]:
    """eps, the momentum and ``1 - momentum`` (in double) as the jit arguments of a
    layer of ``config`` (float64 for a float64 layer, else float32)."""
    dtype = np.float64 if config.dtype == "float64" else np.float32
    values = {"eps": config.eps, "momentum": config.momentum}
    values["complement"] = float(np.float64(1.0) - np.float64(config.momentum))
    return {name: np.asarray(value, dtype) for name, value in values.items()}


def stand_ins(hyper: Mapping[str, Any]) -> tuple[Setting, Setting]:
    """eps and the momentum of traced ``hyper`` (:func:`hyper_settings`)."""
    return Setting(hyper["eps"]), Setting(hyper["momentum"], hyper["complement"])


__all__ = ["Setting", "hyper_settings", "stand_ins"]
