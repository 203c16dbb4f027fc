"""The guard around calls into an implementation: results, errors, hangs, its worker."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from normspec.adapters.protocol import WrongOutput
from normspec.conformance.guard import Guard, ImplementationError, ImplementationHung


def test_a_call_returns_its_value_from_a_worker_thread() -> None:
    guard = Guard(timeout=5.0)
    threads = {guard.call("ident", threading.get_ident) for _ in range(5)}
    assert guard.call("add", lambda a, b=0: a + b, 2, b=3) == 5
    assert len(threads) == 1, "calls run on one worker thread, not a new thread each"
    assert threads != {threading.get_ident()}, "calls do not run on the caller's thread"


def test_an_exception_becomes_an_implementation_error_naming_the_operation() -> None:
    def broken() -> None:
        raise ZeroDivisionError("no")

    with pytest.raises(ImplementationError, match=r"train_step: raised ZeroDivisionError: no") as e:
        Guard(timeout=5.0).call("train_step", broken)
    assert "ZeroDivisionError" in e.value.trace


def test_a_wrong_output_passes_through_unchanged() -> None:
    def wrong() -> None:
        raise WrongOutput("shape (2,) expected (3,)")

    with pytest.raises(WrongOutput, match="shape"):
        Guard(timeout=5.0).call("infer", wrong)


def test_the_guard_keeps_working_after_an_error() -> None:
    guard = Guard(timeout=5.0)
    with pytest.raises(ImplementationError):
        guard.call("first", lambda: 1 / 0)
    assert guard.call("second", lambda: 7) == 7


def test_a_hung_call_is_abandoned_and_nothing_is_called_again() -> None:
    guard = Guard(timeout=0.2)
    started = time.perf_counter()
    with pytest.raises(ImplementationHung, match=r"train_step: hung after 0\.2 s"):
        guard.call("train_step", time.sleep, 30)
    assert time.perf_counter() - started < 5
    calls = []
    with pytest.raises(ImplementationHung, match="a call to train_step"):
        guard.call("infer", calls.append, 1)
    assert calls == []


def test_the_worker_thread_ends_when_the_guard_is_collected() -> None:
    guard = Guard(timeout=5.0)
    worker = guard.call("thread", threading.current_thread)
    assert worker.is_alive()
    del guard
    gc.collect()
    worker.join(timeout=5.0)
    assert not worker.is_alive()


def test_close_ends_the_worker_thread_before_it_returns() -> None:
    """A thread that ran a framework's code must end while the interpreter lives: killed at
    exit as a daemon, one holding JAX's thread-local state aborted the process (status 134)."""
    guard = Guard(timeout=5.0)
    worker = guard.call("thread", threading.current_thread)
    guard.close()
    assert not worker.is_alive()
    assert guard.call("value", lambda: 7) == 7  # a later call starts another worker
    guard.close()


def test_close_leaves_a_hung_call_to_its_thread() -> None:
    guard = Guard(timeout=0.05)
    release = threading.Event()
    with pytest.raises(ImplementationHung):
        guard.call("wait", release.wait)
    started = time.perf_counter()
    guard.close()  # does not wait for the stuck call
    assert time.perf_counter() - started < 1.0
    release.set()


def test_a_check_leaves_no_worker_thread_behind() -> None:
    from normspec.adapters.reference import ReferenceImplementation
    from normspec.conformance.runner import CheckOptions, check_implementation

    before = set(threading.enumerate())
    check_implementation(
        ReferenceImplementation("torch"), CheckOptions(clauses="bn.train.output", max_examples=2)
    )
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("normspec")]
