"""Lanes: other processes checking clauses of the same run (``normspec check --jobs N``).

A lane is a :class:`~normspec.worker.Worker` whose service, :class:`ClauseService`, loads the
implementation from the run's target as this process did, in a worker process of its own
with the run's isolation, and runs each clause it is sent in the dtypes it is sent with the
run's options (:class:`~normspec.conformance.runner.CheckSession`): the runs this process
would have made (:mod:`~normspec.conformance.schedule`). Lanes start while this process
checks the first clauses. A lane that does not start, or is lost, gives its work back and
the others do the rest; the report's warnings say so.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from normspec.adapters.protocol import DTypeName, Implementation
from normspec.adapters.registry import target_environment
from normspec.conformance.checks import Check
from normspec.conformance.findings import DtypePart
from normspec.conformance.isolation import IsolatedImplementation, Isolation, isolate
from normspec.worker import Worker, WorkerSetup

if TYPE_CHECKING:
    from normspec.conformance.runner import CheckOptions

#: Seconds a lane may take over one clause (each of the clause's calls has the run's timeout).
LANE_CLAUSE_SECONDS = 24 * 3600.0
#: The most processes ``--jobs auto`` spreads a run over.
MOST_AUTOMATIC_JOBS = 4
#: The environment variable that sets ``--jobs``'s default (a CI whose test runner already
#: keeps every core busy sets it to 1).
JOBS_SETTING = "NORMSPEC_JOBS"


def automatic_jobs() -> int:
    """The processes a run is spread over by default: the cores this process may use (at most
    :data:`MOST_AUTOMATIC_JOBS`: each loads the implementation's framework)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MOST_AUTOMATIC_JOBS))


class ClauseService:
    """A lane's service (in its process): the implementation ``target`` names, loaded as the
    run's, and the check of each clause requested."""

    def __init__(self, target: str, options: CheckOptions, isolation: Isolation) -> None:
        from normspec.conformance.runner import CheckSession, select_checks

        self.implementation = isolate(target, options.profile, isolation, timeout=options.timeout)
        self.session = CheckSession(self.implementation, options)
        self.checks = {item.clause_id: item for item in select_checks(options.clauses)}

    def check(
        self, clause_id: str, dtypes: Sequence[DTypeName], blocked: Mapping[str, str]
    ) -> dict[str, DtypePart]:
        return self.session.check(self.checks[clause_id], dtypes, blocked)

    def close(self) -> None:
        self.session.close()
        self.implementation.close()


class ProcessLane:
    """A lane in a process of its own (:class:`~normspec.conformance.schedule.Lane`)."""

    def __init__(self, target: str, options: CheckOptions, isolation: Isolation) -> None:
        setup = WorkerSetup(
            f"{ClauseService.__module__}:{ClauseService.__qualname__}",
            (target, options, isolation),
            env=target_environment(target),
        )
        self.worker = Worker(setup, timeout=LANE_CLAUSE_SECONDS)
        self.worker.launch()
        #: why the lane ended before the run did (``None``: it did not, or it was stopped)
        self.lost: str | None = None
        self.stopped = False

    def start(self) -> bool:
        try:
            self.worker.ready()
        except Exception as problem:
            self._lose(problem)
            return False
        return True

    def check(
        self, item: Check, dtypes: Sequence[DTypeName], blocked: Mapping[str, str]
    ) -> dict[str, DtypePart] | None:
        try:
            parts: dict[str, DtypePart]
            parts = self.worker.request("check", item.clause_id, tuple(dtypes), dict(blocked))
        except Exception as problem:
            self._lose(problem)
            return None
        return parts

    def _lose(self, problem: Exception) -> None:
        if not self.stopped:
            self.lost = f"{type(problem).__name__}: {problem}"

    def stop(self) -> None:
        self.stopped = True
        pid = self.worker.pid
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        self.worker.close()


def start_lanes(
    implementation: Implementation, options: CheckOptions, clauses: int
) -> list[ProcessLane]:
    """The lanes beside this process for a run of ``clauses`` clauses on ``implementation``
    (:func:`launch_lanes`; none for an implementation in this process)."""
    if not isinstance(implementation, IsolatedImplementation):
        return []
    return launch_lanes(options.target, implementation.isolation, options, clauses)


def launch_lanes(
    target: str | None, isolation: Isolation | None, options: CheckOptions, clauses: int
) -> list[ProcessLane]:
    """The lanes beside this process for a run of ``clauses`` clauses on ``target`` loaded
    with ``isolation``: ``options.jobs - 1`` (fewer where there are fewer clauses), none
    where the run has no target to load or is in-process (debugging, where after a hang
    nothing is called again: in one process). ``normspec check`` launches them before it
    loads the target itself, so that they load it meanwhile."""
    count = min(options.jobs, clauses) - 1
    if count < 1 or target is None or isolation is None or os.name != "posix":
        return []
    return [ProcessLane(target, options, isolation) for _ in range(count)]


def close_lanes(lanes: Sequence[ProcessLane]) -> list[str]:
    """Close the lanes; a warning for each that ended before the run did."""
    for lane in lanes:
        lane.close()
    return [
        f"a lane checking clauses beside this process ended ({lane.lost}); the other "
        "processes checked its clauses"
        for lane in lanes
        if lane.lost is not None
    ]


__all__ = [
    "JOBS_SETTING",
    "ClauseService",
    "ProcessLane",
    "automatic_jobs",
    "close_lanes",
    "launch_lanes",
    "start_lanes",
]
