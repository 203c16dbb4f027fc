"""The worker side of :mod:`normspec.conformance.isolation`: an implementation and its layers.

The service a worker process constructs (``normspec.worker``): it loads the implementation
from its target and profile, builds layers, keeps each under the number the checking
process gave it, and runs the protocol's operations on them. An operation that writes
into an array argument has those writes sent back (``conv.io.inputs_unmodified`` watches
the checking process's arrays).
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from normspec.adapters.protocol import Capabilities, LayerConfig, State
from normspec.adapters.registry import load_target

#: Where an array argument sits: (position,) or (position, index in a list argument).
Path = tuple[int, ...]
#: Frames of a traceback sent back with an exception.
TRACE_FRAMES = 8


@dataclass(frozen=True)
class Description:
    """What the checking process knows of the implementation without calling a layer."""

    name: str
    capabilities: Capabilities
    versions: Mapping[str, str]
    replicated: bool


def array_arguments(args: tuple[Any, ...]) -> list[tuple[Path, Any]]:
    """The arrays among ``args`` and in list or tuple arguments, with where they sit."""
    found: list[tuple[Path, Any]] = []
    for position, value in enumerate(args):
        if isinstance(value, np.ndarray):
            found.append(((position,), value))
        elif isinstance(value, (list, tuple)):
            found += [((position, i), v) for i, v in enumerate(value) if isinstance(v, np.ndarray)]
    return found


class ImplementationHost:
    """An implementation loaded in this (worker) process, and the layers it built."""

    def __init__(self, target: str, profile: str) -> None:
        self.implementation = load_target(target, profile)
        # asked first, as in-process: an adapter may probe its library there (every worker,
        # a fresh one after a crash too, builds layers from the same state)
        self.capabilities = self.implementation.capabilities()
        self.layers: dict[int, Any] = {}

    def describe(self) -> Description:
        implementation = self.implementation
        return Description(
            name=implementation.name,
            capabilities=self.capabilities,
            versions=dict(implementation.versions()),
            replicated=callable(getattr(implementation, "build_replicated", None)),
        )

    def _forget(self, released: tuple[int, ...]) -> None:
        for handle in released:
            self.layers.pop(handle, None)

    def build(self, handle: int, config: LayerConfig, released: tuple[int, ...] = ()) -> bool:
        """Build a layer under ``handle``; whether it offers ``second_order_vjp``."""
        self._forget(released)
        layer = self.implementation.build(config)
        self.layers[handle] = layer
        return callable(getattr(layer, "second_order_vjp", None))

    def build_replicated(
        self, handle: int, config: LayerConfig, replicas: int, released: tuple[int, ...] = ()
    ) -> None:
        self._forget(released)
        build = getattr(self.implementation, "build_replicated")  # noqa: B009  (a protocol's)
        self.layers[handle] = build(config, replicas)

    def call(
        self, handle: int, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, list[tuple[Path, Any]]]:
        """``method`` of a layer on the arguments: its result, and the array arguments it
        wrote into (where they sit, what they hold now)."""
        layer = self.layers[handle]
        arrays = array_arguments(args)
        before = [value.copy() for _, value in arrays]
        result = getattr(layer, method)(*args, **kwargs)
        written = [
            (path, value)
            for (path, value), old in zip(arrays, before, strict=True)
            if not np.array_equal(old, value, equal_nan=old.dtype.kind in "fc")
        ]
        return result, written

    def build_set(
        self,
        handle: int,
        config: LayerConfig,
        params: tuple[Any, Any] | None,
        state: State | None,
        released: tuple[int, ...] = (),
    ) -> tuple[bool, list[tuple[Path, Any]], tuple[str, Exception, str] | None]:
        """:meth:`build`, then ``set_parameters(*params)`` and ``set_state(state)`` where
        given: three operations for one request. Whether the layer offers
        ``second_order_vjp``, the parameters ``set_parameters`` wrote into, and the operation
        that raised (with the exception and its traceback; those after it are not run).
        What ``build`` raises, raises."""
        second_order = self.build(handle, config, released)
        written: list[tuple[Path, Any]] = []
        operation = "set_parameters"
        try:
            if params is not None:
                _, written = self.call(handle, operation, params, {})
            operation = "set_state"
            if state is not None:
                self.call(handle, operation, (state,), {})
        except Exception as problem:
            return second_order, written, (operation, problem, traceback.format_exc(TRACE_FRAMES))
        return second_order, written, None

    def close(self) -> None:
        """End what the implementation started (its own worker processes)."""
        close = getattr(self.implementation, "close", None)
        if callable(close):
            close()
