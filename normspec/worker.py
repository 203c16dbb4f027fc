"""A worker process normspec owns: code that may crash or hang runs there, not in normspec.

A :class:`Worker` starts a fresh Python interpreter (never a fork: a process that loaded
JAX or TensorFlow cannot be forked safely) with the environment of this process plus
:attr:`WorkerSetup.env` (``KERAS_BACKEND=jax``, ``MASTER_PORT``, ...), sends it this
process's ``sys.path``, and has it construct one *service* object
(:attr:`WorkerSetup.service`, ``module:callable``), once: the framework is imported once per
worker. A request names a method of the service; its arguments and result travel as
:mod:`normspec.messages`. An exception the method raises comes back and is raised here,
with the worker's traceback as ``worker_trace``.

What the worker cannot answer for is a :class:`WorkerLost`: it died (a signal, ``abort``,
``os._exit``, the system's out-of-memory killer), it held more resident memory than
:attr:`WorkerSetup.memory_limit` (a watch on Linux kills it), or a request took longer than
:attr:`Worker.timeout` (it is killed; Python's stacks are dumped into its output first). The
next request starts a fresh worker. A worker's standard output and error go to a file of
its own, whose end comes with a :class:`WorkerLost` (faulthandler writes the Python stack of
a crash there).

Workers run in a session of their own (a Ctrl-C reaches this process only, which ends
them) and end by themselves when this process is gone. They start with OpenMP's passive
wait policy unless the environment says otherwise (:data:`WAITING_ENVIRONMENT`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import IO, Any, NoReturn

from normspec import messages

#: Seconds between two looks at a busy worker's resident memory.
MEMORY_WATCH_SECONDS = 0.05
#: Seconds a worker gets to dump its Python stacks before a hung one is killed.
STACK_DUMP_SECONDS = 0.25
#: Seconds a closed worker gets to exit before it is killed.
EXIT_SECONDS = 5.0
#: Bytes of a lost worker's output that come with the WorkerLost.
OUTPUT_TAIL_BYTES = 4096
#: The environment a worker starts with unless this process's says otherwise: a worker
#: waits between requests, and an OpenMP runtime's idle threads spinning meanwhile (its
#: default) take the cores the requesting process works on (a torch BatchNorm2d check took
#: 20 s instead of 5 s on two cores). The wait policy changes no result.
WAITING_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}

#: What the new interpreter runs: the parent's ``sys.path`` arrives first, with the folder
#: the parent imported normspec from, which comes first while normspec is imported (the
#: parent's path may start with a project folder holding a ``normspec`` folder of its own, a
#: checkout of normspec's sources), then :func:`normspec.worker_serve.serve`.
BOOTSTRAP = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "connection = Connection(int(sys.argv[1]))\n"
    "path, home = connection.recv()\n"
    "sys.path[:] = [home, *path]\n"
    "from normspec.worker_serve import serve\n"
    "sys.path[:] = path\n"
    "serve(connection)\n"
)
#: The folder this process imported normspec from.
NORMSPEC_HOME = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_memory_limit() -> int | None:
    """Half of this machine's physical memory, in bytes (``None`` where it is unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(count: int) -> str:
    return f"{count / 2**30:.3g} GiB"


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker is started with.

    ``service`` (``module:callable``) is called once in the worker with ``arguments``; the
    requests call methods of what it returns. ``env`` is added to the environment the
    worker starts with. ``memory_limit``: bytes of resident memory above which the worker
    is killed while it serves a request (``None``: no limit; watched on Linux only).
    """

    service: str
    arguments: tuple[Any, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    memory_limit: int | None = None
    #: seconds the service may take to start (a framework import, joining a process group)
    start_timeout: float = 300.0


class WorkerLost(Exception):
    """The worker did not answer: it died, exceeded its memory limit, or hung (killed).

    ``str()`` says what happened (``crashed: SIGSEGV (Segmentation fault)``); ``output`` is
    the end of the worker's output.
    """

    def __init__(self, reason: str, output: str = "") -> None:
        super().__init__(reason)
        self.output = output


class WorkerCrashed(WorkerLost):
    """The worker died or was killed for its memory."""


class WorkerHung(WorkerLost):
    """A request did not return in time; the worker was killed."""


def death_reason(returncode: int) -> str:
    """How a process with this return code ended, in words."""
    if returncode < 0:
        try:
            number = signal.Signals(-returncode)
        except ValueError:
            return f"crashed: killed by signal {-returncode}"
        described = signal.strsignal(number) or ""
        reason = f"crashed: {number.name}" + (f" ({described})" if described else "")
        if number == signal.SIGKILL:
            reason += ": killed from outside, perhaps by the system's out-of-memory killer"
        return reason
    return f"crashed: the worker process exited with status {returncode}"


def resident_bytes(pid: int) -> int | None:
    """A process's resident memory in bytes (Linux ``/proc``; ``None`` elsewhere)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _Process:
    """One started worker interpreter: the process, its connection and its output file."""

    def __init__(self, setup: WorkerSetup) -> None:
        ours, theirs = socket.socketpair()
        self.output: IO[bytes] = tempfile.TemporaryFile(prefix="normspec-worker-")  # noqa: SIM115  (the process writes it)
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", BOOTSTRAP, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env={**WAITING_ENVIRONMENT, **os.environ, **setup.env},
                stdin=subprocess.DEVNULL,
                stdout=self.output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            theirs.close()
        self.connection = Connection(ours.detach())
        # one poll object for every wait (Connection.poll builds a selector each time)
        self._poller = select.poll()
        self._poller.register(self.connection.fileno(), select.POLLIN)
        self.connection.send((list(sys.path), NORMSPEC_HOME))
        messages.send(self.connection, setup)
        self.ready = False

    def answered(self, timeout: float) -> bool:
        """Whether an answer (or the end of the connection) arrives within ``timeout`` s."""
        return bool(self._poller.poll(timeout * 1000.0))

    def tail(self) -> str:
        """The end of the process's output (read once it has ended)."""
        with contextlib.suppress(OSError, ValueError):
            size = self.output.seek(0, os.SEEK_END)
            self.output.seek(max(0, size - OUTPUT_TAIL_BYTES))
            text = self.output.read().decode("utf-8", "replace")
            return text if size <= OUTPUT_TAIL_BYTES else text.partition("\n")[2]
        return ""

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.popen.kill()
        self.popen.wait()

    def dispose(self) -> None:
        """Close the connection and the output file (the process has ended)."""
        self.connection.close()
        self.output.close()


def _end(process: _Process) -> None:
    """Ask a worker to exit and wait for it; kill it if it does not (at close or exit)."""
    with contextlib.suppress(OSError, ValueError):
        messages.send(process.connection, None)
    try:
        process.popen.wait(EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
    process.dispose()


class Worker:
    """A worker process serving one service; restarted after it is lost.

    ``timeout``: seconds a request may take. ``relaunch``: start the next process as soon
    as one is lost, so that it is ready by the next request.
    """

    def __init__(self, setup: WorkerSetup, *, timeout: float = 60.0, relaunch: bool = False):
        self.setup = setup
        self.timeout = timeout
        self.relaunch = relaunch
        #: processes started so far
        self.starts = 0
        self._process: _Process | None = None
        self._finalizer: weakref.finalize[Any, Worker] | None = None

    @property
    def connection(self) -> Connection | None:
        """The running worker's connection (to wait on several workers at once)."""
        return self._process.connection if self._process is not None else None

    @property
    def pid(self) -> int | None:
        return self._process.popen.pid if self._process is not None else None

    def launch(self) -> None:
        """Start a worker unless one is running; do not wait for it."""
        if self._process is None:
            self._process = _Process(self.setup)
            self.starts += 1
            if self._finalizer is not None:
                self._finalizer.detach()
            self._finalizer = weakref.finalize(self, _end, self._process)

    def ready(self) -> None:
        """Start a worker if needed and wait until its service exists.

        Raises what constructing the service raised, or :class:`WorkerLost`.
        """
        self.launch()
        assert self._process is not None
        if not self._process.ready:
            self._answer(self.setup.start_timeout, "start")
            self._process.ready = True

    def request(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` of the service with the arguments; its result."""
        self.ready()
        self.send(method, *args, **kwargs)
        return self.reply()

    def send(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Send a request (to a ready worker) without waiting for its reply."""
        assert self._process is not None and self._process.ready, "the worker is not ready"
        try:
            messages.send(self._process.connection, (method, args, kwargs))
        except OSError:  # died since its last reply
            self._lose(WorkerCrashed, "")

    def reply(self, timeout: float | None = None) -> Any:
        """The reply to the request sent last, within ``timeout`` (default :attr:`timeout`)."""
        return self._answer(self.timeout if timeout is None else timeout, "reply")

    def _answer(self, timeout: float, what: str) -> Any:
        process = self._process
        assert process is not None
        answer: Any = None
        try:
            lost = self._wait(process, timeout)
            if lost is None:
                answer = messages.receive(process.connection)
        except (EOFError, ConnectionError):  # its end of the connection, or a reset (it
            lost = (WorkerCrashed, "")  # died with bytes unread)
        except BaseException:
            # a Ctrl-C, or an answer that cannot be read: the worker's state is unknown
            self._discard()
            raise
        if lost is not None:
            kind, reason = lost
            if kind is WorkerHung:
                reason = (
                    f"hung after {timeout:g} s"
                    if what == "reply"
                    else f"hung: its service did not start within {timeout:g} s"
                )
            self._lose(kind, reason)
        status, *rest = answer
        if status == "ok":
            return rest[0]
        problem, trace = rest
        with contextlib.suppress(AttributeError):
            problem.worker_trace = trace
        if what == "start":
            self._discard()
        raise problem

    def _wait(self, process: _Process, timeout: float) -> tuple[type[WorkerLost], str] | None:
        """Wait until an answer (or the end of the connection) is there: ``None``; else
        why the worker is to be given up (its resident memory is watched meanwhile)."""
        limit = self.setup.memory_limit
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return WorkerHung, "hung"
            step = remaining if limit is None else min(remaining, MEMORY_WATCH_SECONDS)
            if process.answered(step):
                return None
            used = resident_bytes(process.popen.pid) if limit is not None else None
            if limit is not None and used is not None and used > limit:
                return WorkerCrashed, (
                    f"crashed: out of memory: its resident memory exceeded the limit of "
                    f"{format_bytes(limit)} (the worker was killed)"
                )

    def _lose(self, kind: type[WorkerLost], reason: str) -> NoReturn:
        """End the worker (dead, or killed now) and raise ``kind`` saying why.

        A hung worker first dumps its Python stacks into its output (faulthandler); one
        whose connection ended is given a moment to finish dying, so that its exit status
        is its own.
        """
        process = self._process
        assert process is not None
        settle = 0.0 if reason else EXIT_SECONDS  # a memory hog is killed at once
        if kind is WorkerHung:
            settle = STACK_DUMP_SECONDS
            with contextlib.suppress(OSError):
                process.popen.send_signal(signal.SIGUSR1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(settle)
        process.kill()
        reason = reason or death_reason(process.popen.returncode)
        output = process.tail()
        self._discard()
        if self.relaunch:
            self.launch()
        raise kind(reason, output)

    def _discard(self) -> None:
        """Kill the running worker and forget it."""
        if self._process is not None:
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
            self._process.kill()
            self._process.dispose()
            self._process = None

    def close(self) -> None:
        """Let the worker end (killed if it does not, within seconds)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._process = None


__all__ = [
    "Worker",
    "WorkerCrashed",
    "WorkerHung",
    "WorkerLost",
    "WorkerSetup",
    "death_reason",
    "default_memory_limit",
]
