"""Calling an implementation under test: time limits, exceptions, malformed results."""

from __future__ import annotations

import threading
import traceback
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


class Guard:
    """Runs calls into the implementation with a per-call time limit.

    A call that does not return in time is abandoned in a daemon thread and the guard is
    marked hung: every later call fails at once, so one hanging clause cannot stall the run.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.hung: str | None = None
        self._value: Any = None

    def call(self, operation: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.hung is None:
            self._run(operation, function, args, kwargs)
        if self.hung is not None:
            raise ImplementationHung(operation, f"no result within {self.hung}")
        return self._value

    def _run(self, operation: str, function: Callable[..., Any], args: Any, kwargs: Any) -> None:
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = function(*args, **kwargs)
            except BaseException as problem:
                outcome["error"] = problem
                outcome["trace"] = traceback.format_exc(limit=8)

        worker = threading.Thread(target=run, name=f"normspec:{operation}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            self.hung = f"{self.timeout:g} s (a call to {operation}; not called since)"
            return
        if "error" in outcome:
            problem = outcome["error"]
            if isinstance(problem, (ImplementationError, WrongOutput)):
                raise problem  # already says what went wrong
            reason = f"raised {type(problem).__name__}: {problem}"
            raise ImplementationError(operation, reason, outcome["trace"]) from problem
        self._value = outcome["value"]
