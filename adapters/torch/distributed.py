"""Synchronized torch modules (``torch.nn.SyncBatchNorm`` and its likes) on K processes.

A module class with the constructor of ``torch.nn.SyncBatchNorm`` (BatchNorm's arguments
and ``process_group``) is checked twice over: the ``bn.*`` clauses in this process, as
:class:`~normspec.adapters.torch.module.TorchModuleImplementation` does (without a process
group such a module is plain BatchNorm), and the ``sync.*`` clauses (replicas.md) on K
replicas, one process each, synchronized by torch.distributed with the gloo backend on this
machine (``MASTER_ADDR=127.0.0.1`` and a free port).

Process start-up is slow (seconds), so one :class:`ProcessPool` of :data:`WORLD_SIZE`
workers serves every replicated layer of every implementation in this process: the workers
(:class:`normspec.worker.Worker`, started with ``MASTER_ADDR`` and ``MASTER_PORT`` in their
environment) join one process group and create the subgroups of the first K ranks for K =
1 .. WORLD_SIZE once; a layer on K replicas is built on workers 0 .. K-1 with
``process_group=subgroup[K]``. Every worker (:class:`ReplicaHost`) holds a
:class:`~normspec.adapters.torch.module.TorchModuleLayer` around its module and runs the
protocol's operations on it (conversion, output checks and state handling are that
adapter's). A worker that crashes (:class:`ReplicaCrashed`, reported crashed), or replicas
that do not answer in time (:class:`ReplicasHung`: a collective that never completes, reported
hung), end the pool; the next layer starts a fresh one. A replica that raises is an
error, and the pool goes on.

``torch.nn.SyncBatchNorm`` refuses CPU tensors once a process group exists ("SyncBatchNorm
expected input tensor to be on GPU"): on the CPU its ``sync.*`` clauses are reported not
applicable with that reason, without starting processes. With ``device="cuda"`` each
worker uses ``cuda:rank % device_count``.
"""

from __future__ import annotations

import atexit
import datetime
import importlib
import inspect
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import wait
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from normspec.adapters._common import ParameterPolicy
from normspec.adapters.protocol import (
    Array,
    Capabilities,
    LayerConfig,
    State,
    UnsupportedConfig,
)
from normspec.adapters.torch._torch import parameter_dtype
from normspec.adapters.torch.module import (
    TorchModuleImplementation,
    TorchModuleLayer,
    _construct,
    recognisable,
)
from normspec.messages import exception_name
from normspec.reference import Gradients
from normspec.worker import Worker, WorkerCrashed, WorkerHung, WorkerLost, WorkerSetup

#: Processes in a pool: the largest K the sync.* checks draw.
WORLD_SIZE = 4
#: Seconds a replicated operation may take before the pool is declared hung and ended.
REPLY_TIMEOUT = 45.0
#: Seconds the workers may take to start and join the group.
START_TIMEOUT = 120.0
#: Seconds to read an answer that has begun to arrive.
ANSWER_SECONDS = 5.0
#: The constructor argument that makes a BatchNorm-like class synchronized.
GROUP_ARGUMENT = "process_group"


def takes_process_group(cls: type) -> bool:
    """Whether ``cls``'s constructor takes ``process_group`` (as torch.nn.SyncBatchNorm's)."""
    try:
        return GROUP_ARGUMENT in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the workers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setup:
    """What a worker needs to join the group: rank, size, device, collective time limit."""

    rank: int
    world_size: int
    device: str
    timeout: float


class ReplicaHost:
    """A worker of the pool (the service of a :class:`normspec.worker.Worker`): it joins the
    group (``MASTER_ADDR`` and ``MASTER_PORT`` are in its environment), makes the subgroups
    of the first K ranks, and serves one layer at a time."""

    def __init__(self, setup: _Setup) -> None:
        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            rank=setup.rank,
            world_size=setup.world_size,
            timeout=datetime.timedelta(seconds=setup.timeout),
        )
        self.groups = {k: dist.new_group(list(range(k))) for k in range(1, setup.world_size + 1)}
        device = torch.device(setup.device)
        if device.type == "cuda":
            device = torch.device("cuda", setup.rank % max(1, torch.cuda.device_count()))
        self.device = device
        self.layer: TorchModuleLayer | None = None

    def build(self, target: str, config: LayerConfig, replicas: int, policy: Any) -> None:
        module_name, _, qualname = target.partition(":")
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        module = _construct(
            cls,
            num_features=config.num_features,
            eps=config.eps,
            momentum=config.momentum,
            affine=config.affine,
            track_running_stats=config.track_running_stats,
            process_group=self.groups[replicas],
        )
        dtype = parameter_dtype(config.dtype, policy)
        module.to(device=self.device, dtype=dtype)
        self.layer = TorchModuleLayer(module, config, self.device, dtype)

    def call(self, command: str, arguments: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """``command`` of the layer's protocol operations."""
        assert self.layer is not None, "no layer built"
        return getattr(self.layer, command)(*arguments, **options)

    def close(self) -> None:
        dist.destroy_process_group()


# -- the pool -----------------------------------------------------------------------------


class ReplicaError(RuntimeError):
    """A replica raised, or a replica's worker was lost."""


class ReplicaCrashed(WorkerCrashed, ReplicaError):
    """A replica's worker died (the pool is ended)."""


class ReplicasHung(WorkerHung, ReplicaError):
    """Replicas did not answer in time (a collective that never completes; the pool is
    ended)."""


class ProcessPool:
    """``world_size`` workers (:class:`normspec.worker.Worker`) in one gloo process group."""

    def __init__(self, world_size: int = WORLD_SIZE, *, device: str = "cpu") -> None:
        self.world_size = world_size
        self.device = device
        self.started = time.perf_counter()
        environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        self._workers = [
            Worker(
                WorkerSetup(
                    f"{__name__}:ReplicaHost",
                    (_Setup(rank, world_size, device, REPLY_TIMEOUT),),
                    environment,
                    start_timeout=START_TIMEOUT,
                ),
                timeout=REPLY_TIMEOUT,
            )
            for rank in range(world_size)
        ]
        for worker in self._workers:
            worker.launch()  # all at once: each waits in the group for the others
        self.alive = True
        for rank, worker in enumerate(self._workers):
            try:
                worker.ready()
            except Exception as problem:
                self.close()
                raise ReplicaError(f"start-up: replica {rank} {_failure(problem)}") from None
        #: seconds from the first start until every worker had joined the group
        self.startup_seconds = time.perf_counter() - self.started
        atexit.register(self.close)

    def run(
        self, replicas: int, command: str, arguments: Sequence[Any], **options: Any
    ) -> list[Any]:
        """Send ``command`` with per-replica ``arguments`` (and the same keyword ``options``)
        to workers 0 .. replicas-1 at once (a collective needs them all) and return their
        results in rank order. ``build`` builds each worker's layer; any other command is
        one of the layer's operations."""
        if not self.alive:
            raise ReplicaError("the process pool has ended")
        for rank in range(replicas):
            if command == "build":
                self._workers[rank].send("build", *arguments[rank])
            else:
                self._workers[rank].send("call", command, tuple(arguments[rank]), options)
        return self._collect(range(replicas), command)

    def _collect(self, ranks: range, what: str) -> list[Any]:
        """Every rank's answer; after a first problem the others get 2 s (they may be
        waiting for the failed one in a collective). A lost worker, or replicas that do not
        answer in time, end the pool."""
        pending: dict[Any, int] = {self._workers[rank].connection: rank for rank in ranks}
        results: dict[int, Any] = {}
        problems: list[str] = []  # a lost replica's first: the others fail because of it
        lost: WorkerLost | None = None
        deadline = time.monotonic() + REPLY_TIMEOUT
        while pending:
            remaining = deadline - time.monotonic()
            ready = wait(list(pending), timeout=max(0.0, remaining)) if remaining > 0 else []
            if not ready:
                self.close()
                late = ", ".join(str(r) for r in sorted(pending.values()))
                if lost is not None:
                    raise ReplicaCrashed(
                        f"{problems[0]} (no answer from replica(s) {late})", lost.output
                    )
                if problems:
                    raise ReplicaError(f"{what}: {problems[0]} (no answer from replica(s) {late})")
                raise ReplicasHung(
                    f"hung after {REPLY_TIMEOUT:g} s: no answer from replica(s) {late}"
                )
            for connection in ready:
                rank = pending.pop(connection)
                try:
                    results[rank] = self._workers[rank].reply(ANSWER_SECONDS)
                except WorkerLost as problem:
                    problems.insert(
                        0 if lost is None else len(problems), f"replica {rank} {problem}"
                    )
                    lost = lost or problem
                except Exception as problem:
                    problems.append(f"replica {rank} {_failure(problem)}")
                if problems:
                    deadline = min(deadline, time.monotonic() + 2.0)
        if lost is not None:
            self.close()
            raise ReplicaCrashed(problems[0], lost.output)
        if problems:
            raise ReplicaError(f"{what}: {problems[0]}")
        return [results[rank] for rank in ranks]

    def close(self) -> None:
        """End the workers (a hung one is killed)."""
        if not self.alive:
            return
        self.alive = False
        for worker in self._workers:
            worker.close()


def _failure(problem: Exception) -> str:
    """What a replica's exception says: ``raised Type: message`` and its traceback."""
    trace = getattr(problem, "worker_trace", "")
    return f"raised {exception_name(problem)}: {problem}" + (f"\n{trace}" if trace else "")


#: The live pools, by size and device: every implementation of this process shares them
#: (a worker builds any module class by its import path), so a session launches its
#: worker processes once.
_POOLS: dict[tuple[int, str], ProcessPool] = {}


def shared_pool(world_size: int, device: str) -> ProcessPool:
    """The live pool of ``world_size`` workers on ``device``, started if there is none."""
    pool = _POOLS.get((world_size, device))
    if pool is None or not pool.alive:
        pool = _POOLS[world_size, device] = ProcessPool(world_size, device=device)
    return pool


# -- the replicated layer and the implementation ------------------------------------------


class DistributedLayer:
    """A :class:`~normspec.adapters.protocol.ReplicatedLayer` on workers 0 .. replicas-1."""

    def __init__(self, pool: ProcessPool, replicas: int) -> None:
        self.pool, self.replicas = pool, replicas

    def _same(self, command: str, *arguments: Any) -> list[Any]:
        return self.pool.run(self.replicas, command, [arguments] * self.replicas)

    def set_parameters(self, gamma: Array, beta: Array) -> None:
        self._same("set_parameters", gamma, beta)

    def set_state(self, state: State) -> None:
        self._same("set_state", state)

    def states(self) -> list[State | None]:
        found: list[State | None] = self._same("state")
        return found

    def _each(self, name: str, arrays: Sequence[Array]) -> None:
        if len(arrays) != self.replicas:
            raise ValueError(f"{len(arrays)} {name} for a layer on {self.replicas} replicas")

    def train_step(self, xs: Sequence[Array], masks: Sequence[Array] | None = None) -> list[Array]:
        if masks is not None:
            raise UnsupportedConfig("torch's synchronized BatchNorm takes no mask")
        self._each("inputs", xs)
        return self.pool.run(self.replicas, "train_step", [(x,) for x in xs])

    def vjp(
        self, xs: Sequence[Array], dys: Sequence[Array], masks: Sequence[Array] | None = None
    ) -> list[Gradients]:
        if masks is not None:
            raise UnsupportedConfig("torch's synchronized BatchNorm takes no mask")
        self._each("inputs", xs)
        self._each("cotangents", dys)
        arguments = list(zip(xs, dys, strict=True))
        grads: list[Gradients] = self.pool.run(self.replicas, "vjp", arguments, training=True)
        return grads


class DistributedTorchImplementation(TorchModuleImplementation):
    """A SyncBatchNorm-like class: ``bn.*`` in this process, ``sync.*`` on K processes.

    ``world_size`` is the pool's size (the largest K). The pool (:func:`shared_pool`) starts
    at the first replicated layer and lives until :meth:`close` or the end of the interpreter.
    """

    def __init__(
        self,
        module_class: type[nn.Module],
        profile: str = "torch",
        *,
        device: str | torch.device | None = None,
        parameters: ParameterPolicy = "float32",
        ranks: frozenset[int] | None = None,
        world_size: int = WORLD_SIZE,
    ) -> None:
        super().__init__(module_class, profile, device=device, parameters=parameters, ranks=ranks)
        if not takes_process_group(module_class):
            raise TypeError(f"{module_class!r} takes no {GROUP_ARGUMENT} argument")
        self.world_size = world_size
        self.pool: ProcessPool | None = None
        self.name = self.describe(
            f"{module_class.__module__}.{module_class.__qualname__} on {world_size} processes"
        )

    def refusal(self) -> str | None:
        """Why the module cannot run synchronized here, known without running it."""
        if issubclass(self.module_class, nn.SyncBatchNorm) and self.device.type == "cpu":
            return (
                "torch.nn.SyncBatchNorm refuses CPU tensors in a process group "
                "(ValueError: SyncBatchNorm expected input tensor to be on GPU); it runs "
                "these clauses with NORMSPEC_TORCH_DEVICE=cuda"
            )
        return None

    def base_capabilities(self) -> Capabilities:
        base = super().base_capabilities()
        refused = self.refusal()
        notes = dict(base.notes)
        notes["replica_masks"] = "torch's synchronized BatchNorm takes no mask"
        if refused is not None:
            notes["replicas"] = refused
        return replace(base, replicas=refused is None, replica_masks=False, notes=notes)

    def build_replicated(self, config: LayerConfig, replicas: int) -> DistributedLayer:
        if not 1 <= replicas <= self.world_size:
            raise UnsupportedConfig(f"{replicas} replicas: the pool has {self.world_size}")
        if config.renorm is not None:
            raise UnsupportedConfig("torch has no batch renormalization")
        refused = self.refusal()
        if refused is not None:
            raise UnsupportedConfig(refused)
        self.capabilities()  # the dtypes the module supports, probed in this process
        self.pool = shared_pool(self.world_size, str(self.device))
        cls = self.module_class
        target = f"{cls.__module__}:{cls.__qualname__}"
        layer = DistributedLayer(self.pool, replicas)
        layer._same("build", target, config, replicas, self.parameters)
        return layer

    def close(self) -> None:
        """End the worker processes (of every implementation sharing them)."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def recognise(obj: object, profile: str) -> DistributedTorchImplementation | None:
    """The recogniser this package declares (``ADAPTERS``): a BatchNorm-like
    module class whose constructor also takes ``process_group``."""
    if not (recognisable(obj) and isinstance(obj, type) and takes_process_group(obj)):
        return None
    assert issubclass(obj, nn.Module)
    return DistributedTorchImplementation(obj, profile)


__all__ = [
    "DistributedLayer",
    "DistributedTorchImplementation",
    "ProcessPool",
    "ReplicaCrashed",
    "ReplicaError",
    "ReplicaHost",
    "ReplicasHung",
    "recognise",
    "shared_pool",
    "takes_process_group",
]
