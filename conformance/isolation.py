"""Checking an implementation in a worker process, so that its crashes and hangs end the
worker and not the run.

:func:`isolate` starts a worker (:mod:`normspec.worker`) that loads the implementation from
its target and profile (``normspec.adapters.registry.load_target``: the framework is
imported there, once per worker, never in this process) and returns an
:class:`IsolatedImplementation`: the protocol's ``Implementation``, whose layers are handles
of layers living in the worker. Every operation (``build``, ``set_parameters``, ...,
``build_replicated`` and the replicated layer's methods) is a request to the worker; the
checks, the reference and Hypothesis stay here, so that a seed reproduces its report as
in-process. A worker lost to a crash or a hang (:class:`normspec.worker.WorkerLost`) is
replaced at once; the guard (``conformance.guard``) reports the loss as the clause's
outcome.

An implementation can be isolated when it can be loaded from a target in a fresh process:
``normspec check``, ``normspec report`` and the pytest plugin do so by default, and
``--in-process`` loads it here instead. An implementation object built in Python and passed
to ``check_implementation`` runs in-process; the report says which (``Report.isolation``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from normspec.adapters.protocol import (
    Array,
    Capabilities,
    Implementation,
    LayerConfig,
    State,
)
from normspec.adapters.registry import TargetError, load_target, target_environment
from normspec.conformance.isolation_host import Description, Path
from normspec.reference import Gradients
from normspec.reference.second_order import SecondOrderGradients
from normspec.worker import (
    Worker,
    WorkerLost,
    WorkerSetup,
    default_memory_limit,
    format_bytes,
)

#: The service the worker constructs.
HOST = "normspec.conformance.isolation_host:ImplementationHost"
#: What a report says of an implementation called in the checking process.
IN_PROCESS = "in-process"


@dataclass(frozen=True)
class Isolation:
    """How an implementation's worker is started.

    ``memory_limit``: bytes of resident memory above which the worker is killed and the
    call reported crashed (default half the machine's memory; ``None``: no limit).
    ``env``: variables added to the worker's environment (``{"KERAS_BACKEND": "jax"}``).
    """

    memory_limit: int | None = field(default_factory=default_memory_limit)
    env: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """How a report names it: ``in a worker process (memory limit 11.5 GiB)``."""
        limits = []
        if self.memory_limit is not None:
            limits.append(f"memory limit {format_bytes(self.memory_limit)}")
        limits += [f"{name}={value}" for name, value in sorted(self.env.items())]
        return "in a worker process" + (f" ({', '.join(limits)})" if limits else "")


class _Handles:
    """Numbers for the layers that live in the worker, and those this process let go of
    (the next build forgets them there)."""

    def __init__(self) -> None:
        self._numbers = itertools.count(1)
        self._released: list[int] = []

    def new(self) -> int:
        return next(self._numbers)

    def track(self, layer: object, number: int) -> None:
        weakref.finalize(layer, self._released.append, number)

    def released(self) -> tuple[int, ...]:
        taken = tuple(self._released)
        del self._released[: len(taken)]  # a number released meanwhile stays for next time
        return taken


def _write_back(args: tuple[Any, ...], written: list[tuple[Path, Any]]) -> None:
    """Copy what the worker's layer wrote into its array arguments into ours."""
    for path, value in written:
        target: Any = args[path[0]]
        if len(path) > 1:
            target = target[path[1]]
        np.copyto(target, value)


class _RemoteLayer:
    """A layer living in the worker, under its number."""

    def __init__(self, worker: Worker, handle: int) -> None:
        self._worker = worker
        self._handle = handle

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result, written = self._worker.request("call", self._handle, method, args, kwargs)
        _write_back(args, written)
        return result


class RemoteLayer(_RemoteLayer):
    """A :class:`~normspec.adapters.protocol.Layer` living in the worker."""

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self._call("set_parameters", gamma, beta)

    def set_state(self, state: State) -> None:
        self._call("set_state", state)

    def state(self) -> State | None:
        return self._call("state")

    def train_step(self, x: Array) -> Array:
        return self._call("train_step", x)

    def infer(self, x: Array) -> Array:
        return self._call("infer", x)

    def vjp(self, x: Array, dy: Array, *, training: bool) -> Gradients:
        return self._call("vjp", x, dy, training=training)


class RemoteSecondOrderLayer(RemoteLayer):
    """A :class:`~normspec.adapters.protocol.SecondOrderLayer` living in the worker."""

    def second_order_vjp(
        self, x: Array, dy: Array, v: Array, v_gamma: Array, v_beta: Array
    ) -> SecondOrderGradients:
        return self._call("second_order_vjp", x, dy, v, v_gamma, v_beta)


class RemoteReplicatedLayer(_RemoteLayer):
    """A :class:`~normspec.adapters.protocol.ReplicatedLayer` living in the worker."""

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self._call("set_parameters", gamma, beta)

    def set_state(self, state: State) -> None:
        self._call("set_state", state)

    def states(self) -> list[State | None]:
        return self._call("states")

    def train_step(self, xs: Sequence[Array], masks: Sequence[Array] | None = None) -> list[Array]:
        return self._call("train_step", xs, masks)

    def vjp(
        self, xs: Sequence[Array], dys: Sequence[Array], masks: Sequence[Array] | None = None
    ) -> list[Gradients]:
        return self._call("vjp", xs, dys, masks)


class IsolatedImplementation:
    """An :class:`~normspec.adapters.protocol.Implementation` living in a worker process.

    ``worker`` serves it (its ``timeout`` is the per-call limit); :meth:`close` ends it.
    """

    def __init__(self, worker: Worker, description: Description, isolation: Isolation) -> None:
        self.worker = worker
        self.isolation = isolation
        self.name = description.name
        self._capabilities = description.capabilities
        self._versions = dict(description.versions)
        self._handles = _Handles()

    def capabilities(self) -> Capabilities:
        return self._capabilities

    def versions(self) -> Mapping[str, str]:
        return self._versions

    def build(self, config: LayerConfig) -> RemoteLayer:
        handle = self._handles.new()
        second_order = self.worker.request("build", handle, config, self._handles.released())
        return self._layer(handle, second_order)

    def _layer(self, handle: int, second_order: bool) -> RemoteLayer:
        layer = (RemoteSecondOrderLayer if second_order else RemoteLayer)(self.worker, handle)
        self._handles.track(layer, handle)
        return layer

    def build_set(
        self, config: LayerConfig, params: tuple[Array, Array] | None, state: State | None
    ) -> tuple[RemoteLayer, tuple[str, Exception] | None]:
        """``build``, then ``set_parameters(*params)`` and ``set_state(state)`` where given,
        in one request (a check builds a layer this way for nearly every example): the
        layer, and the operation that raised with its exception (the operations after it
        were not run). What ``build`` raises, raises; a worker lost on the way is reported
        against the three operations."""
        from normspec.conformance.guard import as_implementation_error

        handle = self._handles.new()
        request = ("build_set", handle, config, params, state, self._handles.released())
        try:
            second_order, written, failure = self.worker.request(*request)
        except WorkerLost as lost:
            if params is None and state is None:
                raise
            raise as_implementation_error("build, set_parameters or set_state", lost, "") from None
        if params is not None:
            _write_back(params, written)
        layer = self._layer(handle, second_order)
        if failure is None:
            return layer, None
        operation, problem, trace = failure
        with contextlib.suppress(AttributeError):
            problem.worker_trace = trace
        return layer, (operation, problem)

    def close(self) -> None:
        """End the worker (and what the implementation started there)."""
        self.worker.close()

    def __enter__(self) -> IsolatedImplementation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class IsolatedReplicatedImplementation(IsolatedImplementation):
    """An isolated implementation that also builds layers on K replicas."""

    def build_replicated(self, config: LayerConfig, replicas: int) -> RemoteReplicatedLayer:
        handle = self._handles.new()
        self.worker.request("build_replicated", handle, config, replicas, self._handles.released())
        layer = RemoteReplicatedLayer(self.worker, handle)
        self._handles.track(layer, handle)
        return layer


def isolate(
    target: str, profile: str, isolation: Isolation | None = None, *, timeout: float = 60.0
) -> IsolatedImplementation:
    """The implementation ``target`` names, under ``profile``, loaded in a worker process.

    ``TargetError`` where the target does not load there (or the worker is lost loading it).
    """
    isolation = isolation or Isolation()
    isolation = replace(isolation, env={**target_environment(target), **isolation.env})
    setup = WorkerSetup(HOST, (target, profile), isolation.env, isolation.memory_limit)
    worker = Worker(setup, timeout=timeout)
    try:
        worker.ready()
        worker.send("describe")
        description: Description = worker.reply(setup.start_timeout)
    except WorkerLost as lost:
        worker.close()
        raise TargetError(f"loading {target!r} in a worker process: {lost}") from None
    except BaseException:
        worker.close()
        raise
    worker.relaunch = True  # from now on a lost worker is replaced at once
    kind = IsolatedReplicatedImplementation if description.replicated else IsolatedImplementation
    return kind(worker, description, isolation)


def load_implementation(
    target: str, profile: str, isolation: Isolation | None, *, timeout: float = 60.0
) -> Implementation:
    """The implementation ``target`` names: in a worker process, or in this process where
    ``isolation`` is ``None`` or worker processes are not available (not POSIX)."""
    if isolation is None or os.name != "posix":
        return load_target(target, profile)
    return isolate(target, profile, isolation, timeout=timeout)


def isolation_of(implementation: object) -> str:
    """How a report names where ``implementation``'s calls run."""
    if isinstance(implementation, IsolatedImplementation):
        return implementation.isolation.describe()
    return IN_PROCESS


def command_flags(implementation: object) -> str:
    """The ``normspec check`` options that run ``implementation`` where it runs now (for
    reproduce commands): ``--in-process``, or a memory limit other than the default."""
    if not isinstance(implementation, IsolatedImplementation):
        return " --in-process"
    limit = implementation.isolation.memory_limit
    if limit == default_memory_limit():
        return ""
    return f" --memory-limit {0 if limit is None else limit / 2**30:g}"


__all__ = [
    "IN_PROCESS",
    "IsolatedImplementation",
    "IsolatedReplicatedImplementation",
    "Isolation",
    "RemoteLayer",
    "RemoteReplicatedLayer",
    "RemoteSecondOrderLayer",
    "command_flags",
    "isolate",
    "isolation_of",
    "load_implementation",
]
