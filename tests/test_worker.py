"""normspec.worker: a service in a worker process, its answers, its crashes and hangs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from normspec.messages import RemoteException
from normspec.worker import Worker, WorkerCrashed, WorkerHung, WorkerSetup

FIXTURES = Path(__file__).resolve().parent / "fixtures"
if str(FIXTURES) not in sys.path:
    sys.path.insert(0, str(FIXTURES))

SERVICE = WorkerSetup("worker_service:Service", (1.0,), env={"NORMSPEC_TEST_WORKER": "yes"})


@pytest.fixture
def worker() -> Worker:
    started = Worker(SERVICE, timeout=10.0, relaunch=True)
    yield started
    started.close()


def test_requests_call_the_service_built_once_with_the_environment_and_path(
    worker: Worker,
) -> None:
    assert worker.request("add", 2.0) == 3.0
    value, path = worker.request("environment", "NORMSPEC_TEST_WORKER")
    assert value == "yes" and str(FIXTURES) in path
    assert worker.starts == 1


def test_arrays_keep_their_layout_and_arrive_writable(worker: Worker) -> None:
    base = np.zeros((4, 6, 8))
    strided = base[:, ::2, 1:]
    strides, writable, c_order, f_order = worker.request("layout", strided)
    assert strides == strided.strides and writable and not (c_order or f_order)
    assert worker.request("layout", np.asfortranarray(base))[3]
    large = np.arange(100_000.0)  # out of band
    assert worker.request("layout", large)[1]
    assert np.array_equal(worker.request("add", large), large + 1.0)


def test_a_librarys_values_come_back_as_plain_python_and_numpy(worker: Worker) -> None:
    """What the checking process receives never imports the library under test."""
    version, tensor = worker.request("library_values")
    assert type(version) is str and version == "2.13.0"
    assert type(tensor) is np.ndarray and tensor.tolist() == [0.0, 1.0, 2.0]
    assert "worker_service" not in sys.modules


def test_an_exception_comes_back_with_the_workers_traceback(worker: Worker) -> None:
    with pytest.raises(ValueError, match="bad value") as raised:
        worker.request("raise_value_error")
    assert "raise_value_error" in raised.value.worker_trace


def test_a_library_exception_comes_back_by_name_without_importing_the_library(
    worker: Worker,
) -> None:
    with pytest.raises(RemoteException, match="the kernel refused") as raised:
        worker.request("raise_library_error")
    assert raised.value.type_name == "worker_service.LibraryError"
    with pytest.raises(RemoteException) as exited:  # a SystemExit must not end this process
        worker.request("exit")
    assert exited.value.type_name == "builtins.SystemExit"
    assert worker.request("add", 1.0) == 2.0 and worker.starts == 1


def test_a_crash_is_reported_with_the_python_stack_and_a_fresh_worker_follows(
    worker: Worker,
) -> None:
    worker.request("add", 0.0)
    first = worker.pid
    with pytest.raises(WorkerCrashed, match=r"crashed: SIGSEGV \(Segmentation fault\)") as lost:
        worker.request("segfault")
    assert "in segfault" in lost.value.output  # faulthandler's stack of the crash
    assert worker.request("add", 1.0) == 2.0
    assert worker.starts == 2 and worker.pid != first


def test_a_hung_request_is_killed_after_its_stacks_are_dumped(worker: Worker) -> None:
    worker.timeout = 0.5
    started = time.perf_counter()
    with pytest.raises(WorkerHung, match=r"hung after 0\.5 s") as lost:
        worker.request("sleep_in_here", 60.0)
    assert time.perf_counter() - started < 10
    assert "in sleep_in_here" in lost.value.output
    worker.timeout = 10.0
    assert worker.request("add", 1.0) == 2.0


def test_close_ends_the_worker_process(worker: Worker) -> None:
    worker.request("add", 0.0)
    pid = worker.pid
    worker.close()
    assert worker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_worker_that_dies_with_bytes_unread_is_a_crash(worker: Worker) -> None:
    """Its end of the connection then resets ours (ECONNRESET), where a plain death ends it."""
    worker.request("add", 0.0)
    connection = worker.connection
    assert connection is not None and worker.pid is not None
    worker.send("sleep_in_here", 60.0)
    time.sleep(0.2)  # the request read; now bytes it will never read
    connection.send_bytes(b"unread")
    os.kill(worker.pid, 9)
    with pytest.raises(WorkerCrashed, match="crashed: SIGKILL"):
        worker.reply()
    assert worker.request("add", 1.0) == 2.0
