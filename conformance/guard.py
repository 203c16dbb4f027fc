"""Calling an implementation under test: time limits, exceptions, malformed results, and
calls that never come back (a crashed or hung worker process)."""

from __future__ import annotations

import queue
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar

from normspec.adapters.protocol import WrongOutput
from normspec.messages import exception_name
from normspec.worker import Worker, WorkerHung, WorkerLost

T = TypeVar("T")


class ImplementationError(Exception):
    """The implementation raised, hung or returned something unusable."""

    def __init__(self, operation: str, reason: str, trace: str = "") -> None:
        super().__init__(f"{operation}: {reason}")
        self.operation = operation
        self.reason = reason
        self.trace = trace


class ImplementationLost(ImplementationError):
    """A call never returned: it crashed its worker process, or hung. It is a failing
    example like any other (shrunk, each retry on a fresh worker); ``outcome`` is the
    clause's outcome it makes, ``trace`` the end of the worker's output."""

    outcome: ClassVar[Literal["crashed", "hung"]]


class ImplementationCrashed(ImplementationLost):
    """The worker died during the call (a signal, an exit, its memory limit)."""

    outcome = "crashed"


class ImplementationHung(ImplementationLost):
    """A call exceeded the per-call time limit."""

    outcome = "hung"


def as_implementation_error(
    operation: str, problem: BaseException, trace: str
) -> ImplementationError | WrongOutput:
    """What the checks see of ``problem``, raised by a call to ``operation``."""
    if isinstance(problem, WorkerLost):
        kind = ImplementationHung if isinstance(problem, WorkerHung) else ImplementationCrashed
        return kind(operation, str(problem), problem.output)
    if isinstance(problem, (ImplementationError, WrongOutput)):
        return problem  # already says what went wrong
    reason = f"raised {exception_name(problem)}: {problem}"
    error = ImplementationError(operation, reason, getattr(problem, "worker_trace", trace))
    error.__cause__ = problem
    return error


class _Call:
    """One call to run on the worker thread, and what came of it."""

    def __init__(self, function: Callable[..., Any], args: Any, kwargs: Any) -> None:
        self.function, self.args, self.kwargs = function, args, kwargs
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.trace = ""

    def run(self) -> None:
        try:
            self.value = self.function(*self.args, **self.kwargs)
        except BaseException as problem:
            self.error = problem
            self.trace = traceback.format_exc(limit=8)
        finally:
            self.done.set()


def _serve(calls: queue.SimpleQueue[_Call | None]) -> None:
    """Run calls until ``None`` comes (the guard was closed or collected)."""
    while (call := calls.get()) is not None:
        call.run()


class _CallThread:
    """A guard's worker thread and how to end it."""

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=_serve, args=(self.calls,), name="normspec:implementation", daemon=True
        )
        #: a call on the thread never returned: the thread is left to it
        self.stuck = False
        self.thread.start()

    def stop(self) -> None:
        """End the thread and wait for it, unless a call is stuck on it.

        A thread that ran a framework's code must end before the interpreter does: killed
        at exit as a daemon, a thread holding JAX's thread-local state aborts the process
        (``terminate called after throwing an instance of ''``, exit status 134).
        """
        self.calls.put(None)
        if not self.stuck and self.thread is not threading.current_thread():
            self.thread.join()


class Guard:
    """Runs calls into the implementation with a per-call time limit.

    With ``worker`` (an implementation isolated in a worker process,
    ``conformance.isolation``) the calls run on the caller's thread and are requests to
    that worker, under its time limit, set to ``timeout`` here: a hang or a crash ends the
    worker, a fresh one serves the next call.

    In-process, the calls run one at a time on one daemon worker thread (started with the
    first call: a thread per call would cost milliseconds each, and libraries such as
    TensorFlow set up per-thread state on every new one); the thread ends, and is waited
    for, when the guard is closed, collected, or at the latest when the interpreter exits.
    A call that does not return in time is abandoned with its thread and the guard is
    marked hung: every later call fails at once, so one hanging clause cannot stall the run.
    """

    def __init__(self, timeout: float, worker: Worker | None = None) -> None:
        self.timeout = timeout
        self.hung: str | None = None
        self.isolated = worker is not None
        if worker is not None:
            worker.timeout = timeout
        self._thread: _CallThread | None = None
        self._stop: weakref.finalize[[], Guard] | None = None

    def close(self) -> None:
        """End the worker thread now (a later call starts another)."""
        if self._stop is not None:
            self._stop()
        self._thread = self._stop = None

    def call(self, operation: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.isolated:
            try:
                return function(*args, **kwargs)
            except Exception as problem:
                raise as_implementation_error(operation, problem, "")  # noqa: B904  (its cause)
        call = _Call(function, args, kwargs)
        if self.hung is None:
            self._run(operation, call)
        # one place raises for the hung call and every later one: Hypothesis tells failures
        # apart by where they are raised
        if self.hung is not None:
            raise ImplementationHung(operation, self.hung)
        value: T = call.value
        return value

    def _submit(self, call: _Call) -> _CallThread:
        if self._thread is None:
            self._thread = _CallThread()
            # also at exit (finalize runs its callbacks then): stop() waits for the thread
            self._stop = weakref.finalize(self, self._thread.stop)
        self._thread.calls.put(call)
        return self._thread

    def _run(self, operation: str, call: _Call) -> None:
        thread = self._submit(call)
        if not call.done.wait(self.timeout):
            thread.stuck = True
            self.hung = (
                f"hung after {self.timeout:g} s (a call to {operation}; in-process, its thread "
                "cannot be stopped: the implementation is not called again in this run)"
            )
            return
        if call.error is not None:
            raise as_implementation_error(operation, call.error, call.trace)
