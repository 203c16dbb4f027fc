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
    """Run calls until ``None`` comes (the guard was collected)."""
    while (call := calls.get()) is not None:
        call.run()


class Guard:
    """Runs calls into the implementation with a per-call time limit.

    The calls run one at a time on one daemon worker thread (started with the first call:
    a thread per call would cost milliseconds each, and libraries such as TensorFlow set up
    per-thread state on every new one); the thread ends when the guard is collected. A call
    that does not return in time is abandoned with its thread and the guard is marked hung:
    every later call fails at once, so one hanging clause cannot stall the run.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.hung: str | None = None
        self._calls: queue.SimpleQueue[_Call | None] | None = None

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

    def _submit(self, call: _Call) -> None:
        if self._calls is None:
            self._calls = queue.SimpleQueue()
            worker = threading.Thread(
                target=_serve, args=(self._calls,), name="normspec:implementation", daemon=True
            )
            worker.start()
            weakref.finalize(self, self._calls.put, None)
        self._calls.put(call)

    def _run(self, operation: str, call: _Call) -> None:
        self._submit(call)
        if not call.done.wait(self.timeout):
            self.hung = f"{self.timeout:g} s (a call to {operation}; not called since)"
            return
        if call.error is not None:
            problem = call.error
            if isinstance(problem, (ImplementationError, WrongOutput)):
                raise problem  # already says what went wrong
            reason = f"raised {type(problem).__name__}: {problem}"
            raise ImplementationError(operation, reason, call.trace) from problem
