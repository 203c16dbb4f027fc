"""Calling an implementation under test: time limits, exceptions, malformed results."""

from __future__ import annotations

import queue
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from normspec.adapters.protocol import WrongOutput

T = TypeVar("T")


class ImplementationError(Exception):
    """The implementation raised, hung or returned something unusable."""

    def __init__(self, operation: str, reason: str, trace: str = "") -> None:
        super().__init__(f"{operation}: {reason}")
        self.operation = operation
        self.reason = reason
        self.trace = trace


class ImplementationHung(ImplementationError):
    """A call exceeded the per-call time limit; the implementation is not called again."""


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


class _Worker:
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

    The calls run one at a time on one daemon worker thread (started with the first call:
    a thread per call would cost milliseconds each, and libraries such as TensorFlow set up
    per-thread state on every new one); the thread ends, and is waited for, when the guard
    is closed, collected, or at the latest when the interpreter exits. A call that does not
    return in time is abandoned with its thread and the guard is marked hung: every later
    call fails at once, so one hanging clause cannot stall the run.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.hung: str | None = None
        self._worker: _Worker | None = None
        self._stop: weakref.finalize[[], Guard] | None = None

    def close(self) -> None:
        """End the worker thread now (a later call starts another)."""
        if self._stop is not None:
            self._stop()
        self._worker = self._stop = None

    def call(self, operation: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = _Call(function, args, kwargs)
        if self.hung is None:
            self._run(operation, call)
        # one place raises for the hung call and every later one: Hypothesis tells failures
        # apart by where they are raised
        if self.hung is not None:
            raise ImplementationHung(operation, f"no result within {self.hung}")
        value: T = call.value
        return value

    def _submit(self, call: _Call) -> _Worker:
        if self._worker is None:
            self._worker = _Worker()
            # also at exit (finalize runs its callbacks then): stop() waits for the thread
            self._stop = weakref.finalize(self, self._worker.stop)
        self._worker.calls.put(call)
        return self._worker

    def _run(self, operation: str, call: _Call) -> None:
        worker = self._submit(call)
        if not call.done.wait(self.timeout):
            worker.stuck = True
            self.hung = f"{self.timeout:g} s (a call to {operation}; not called since)"
            return
        if call.error is not None:
            problem = call.error
            if isinstance(problem, (ImplementationError, WrongOutput)):
                raise problem  # already says what went wrong
            reason = f"raised {type(problem).__name__}: {problem}"
            raise ImplementationError(operation, reason, call.trace) from problem
