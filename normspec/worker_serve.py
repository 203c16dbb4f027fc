"""Inside a worker process (:mod:`normspec.worker`): construct the service, serve requests.

Each request is ``(method, args, kwargs)``; the answer ``("ok", result)`` or ``("raised",
exception, traceback text)``. ``None``, or the end of the connection, ends the worker.
faulthandler writes the Python stack of a fatal signal into the worker's output, and on
SIGUSR1 (sent to a hung worker before it is killed) the stacks of every thread.
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, NoReturn

from normspec import messages
from normspec.worker import WorkerSetup

#: Seconds between two looks at whether the process that started this one still lives.
PARENT_WATCH_SECONDS = 1.0
#: Frames of a traceback sent back with an exception.
TRACE_FRAMES = 8


def _construct(setup: WorkerSetup) -> Any:
    module_name, _, attribute = setup.service.partition(":")
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value(*setup.arguments)


def _send_raised(connection: Connection, problem: BaseException) -> None:
    """Send ``problem`` back; as a RemoteException where it does not pickle, or where it is
    no Exception (a SystemExit of the service's must not end the process receiving it)."""
    trace = traceback.format_exc(limit=TRACE_FRAMES)
    if isinstance(problem, Exception):
        try:
            messages.send(connection, ("raised", problem, trace))
            return
        except Exception:
            pass
    name = f"{type(problem).__module__}.{type(problem).__qualname__}"
    messages.send(connection, ("raised", messages.RemoteException(name, str(problem)), trace))


def _send_result(connection: Connection, result: Any) -> None:
    try:
        messages.send(connection, ("ok", result))
    except Exception as problem:  # a result that does not pickle is the service's failure
        reason = f"its result cannot be sent back ({type(problem).__name__}: {problem})"
        messages.send(connection, ("raised", RuntimeError(reason), ""))


def _watch_parent() -> None:
    """End this process once the one that started it is gone (killed, say), even while a
    request is stuck in native code."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_WATCH_SECONDS)
        os._exit(70)

    threading.Thread(target=watch, name="normspec:parent-watch", daemon=True).start()


def serve(connection: Connection) -> None:
    """Run the worker whose setup arrives first on ``connection``; never returns."""
    setup: WorkerSetup = messages.receive(connection)
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    _watch_parent()
    try:
        service = _construct(setup)
    except BaseException as problem:
        _send_raised(connection, problem)
        _exit(1)
    messages.send(connection, ("ok", None))
    while True:
        try:
            request = messages.receive(connection)
        except EOFError:
            break
        if request is None:
            break
        method, args, kwargs = request
        try:
            result = getattr(service, method)(*args, **kwargs)
        except BaseException as problem:
            _send_raised(connection, problem)
            continue
        _send_result(connection, result)
    close = getattr(service, "close", None)
    if callable(close):
        close()
    _exit(0)


def _exit(status: int) -> NoReturn:
    """Exit without the interpreter's teardown (a framework's may crash or hang)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
