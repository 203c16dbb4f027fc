"""A run spread over processes (``--jobs``, conformance.lanes and conformance.schedule): the
report is the one a single process writes, clause for clause, whatever checked each clause;
a clause waits for the clauses it depends on; a lane that is lost gives its clause back."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from gallery.bugs import EpsIgnored

from normspec.adapters.registry import load_target
from normspec.cli import main
from normspec.conformance import lanes, runner
from normspec.conformance.checks import Check
from normspec.conformance.isolation import IsolatedImplementation, Isolation, isolate
from normspec.conformance.results import ClauseResult
from normspec.conformance.run_settings import OptionsError
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.conformance.schedule import checked_in_order

#: Clauses with dependencies between them (bn.train.affine and the backward clauses wait
#: for bn.train.output, bn.running.initial for bn.running.mean and .var).
CLAUSES = "conv.io.shape_dtype,bn.train.*,bn.running.*,bn.backward.train.*"


def _without_times(result: ClauseResult) -> dict[str, Any]:
    fields = dataclasses.asdict(result)
    fields.pop("seconds")
    return fields


def _run(target: str, profile: str, jobs: int) -> Any:
    options = CheckOptions(
        profile=profile,
        clauses=CLAUSES,
        dtypes=["float64", "float32"],
        max_examples=12,
        target=target,
        jobs=jobs,
    )
    with isolate(target, profile, Isolation()) as implementation:
        return check_implementation(implementation, options)


@pytest.mark.parametrize(
    ("target", "profile"),
    [("reference", "paper"), (f"{EpsIgnored.__module__}:{EpsIgnored.__qualname__}", "torch")],
    ids=["conformant", "failing"],
)
def test_a_run_over_three_processes_reports_what_one_process_does(
    target: str, profile: str
) -> None:
    alone = _run(target, profile, jobs=1)
    spread = _run(target, profile, jobs=3)
    assert [r.clause_id for r in spread.results] == [r.clause_id for r in alone.results]
    assert [_without_times(r) for r in spread.results] == [_without_times(r) for r in alone.results]
    assert spread.warnings == alone.warnings
    if profile == "torch":  # the bug fails bn.train.output and its dependents are skipped
        outcomes = {r.clause_id: r.outcome for r in spread.results}
        assert outcomes["bn.train.output"] == "fail"
        assert outcomes["bn.backward.train.dx"] == "skipped"


def test_a_lost_lane_gives_its_clause_back(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = lanes.ProcessLane.check

    def lost_at_once(self: lanes.ProcessLane, item: Check, blocked: Mapping[str, str]) -> Any:
        self.worker.ready()
        self.stopped = False
        pid = self.worker.pid
        assert pid is not None
        lanes.os.kill(pid, lanes.signal.SIGKILL)
        return checked(self, item, blocked)

    alone = _run("reference", "paper", jobs=1)
    monkeypatch.setattr(lanes.ProcessLane, "check", lost_at_once)
    spread = _run("reference", "paper", jobs=2)
    assert [_without_times(r) for r in spread.results] == [_without_times(r) for r in alone.results]
    (warning,) = spread.warnings
    assert "a lane checking clauses beside this process ended (WorkerCrashed" in warning


class _FakeLane:
    """A lane in a thread of this process, recording when each clause started and ended."""

    def __init__(self, events: list[tuple[str, str]], lock: threading.Lock, gone: bool = False):
        self.events, self.lock, self.gone = events, lock, gone

    def start(self) -> bool:
        return True

    def check(self, item: Check, blocked: Mapping[str, str]) -> ClauseResult | None:
        if self.gone:
            return None
        return _checked(item, blocked, self.events, self.lock)

    def stop(self) -> None:
        pass


def _checked(
    item: Check, blocked: Mapping[str, str], events: list[tuple[str, str]], lock: threading.Lock
) -> ClauseResult:
    with lock:
        events.append(("start", item.clause_id))
    time.sleep(0.01)
    outcome = "fail" if item.clause_id == "a" else "pass"
    result = ClauseResult(item.clause_id, "MUST", "", outcome, message=str(dict(blocked)))
    result.dtype_outcomes = {"float32": outcome}
    with lock:
        events.append(("end", item.clause_id))
    return result


def _item(clause_id: str, *depends_on: str) -> Check:
    return Check(clause_id, body=lambda ctx, data: None, depends_on=depends_on)


ITEMS = [_item("a"), _item("b"), _item("c", "a"), _item("d"), _item("e", "c", "b"), _item("f")]


@pytest.mark.parametrize("lane_count", [0, 1, 3])
def test_clauses_wait_for_their_dependencies_and_come_back_in_run_order(lane_count: int) -> None:
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    fakes = [_FakeLane(events, lock) for _ in range(lane_count)]

    def here(item: Check, blocked: Mapping[str, str]) -> ClauseResult:
        return _checked(item, blocked, events, lock)

    results = list(checked_in_order(ITEMS, here, fakes, ["float32"]))
    assert [r.clause_id for r in results] == list("abcdef")
    for item in ITEMS:
        started = events.index(("start", item.clause_id))
        for dependency in item.depends_on:
            assert events.index(("end", dependency)) < started
    messages = {r.clause_id: r.message for r in results}
    assert messages["c"] == "{'float32': 'a'}" and messages["e"] == "{}"


def test_clauses_a_gone_lane_takes_are_checked_here() -> None:
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    here_checked: list[str] = []

    def here(item: Check, blocked: Mapping[str, str]) -> ClauseResult:
        here_checked.append(item.clause_id)
        return _checked(item, blocked, events, lock)

    gone = [_FakeLane(events, lock, gone=True) for _ in range(2)]
    results = list(checked_in_order(ITEMS, here, gone, ["float32"]))
    assert [r.clause_id for r in results] == list("abcdef")
    assert sorted(here_checked) == list("abcdef")


def test_jobs_below_one_are_refused() -> None:
    with pytest.raises(OptionsError, match="at least 1"):
        CheckOptions(jobs=0)


@pytest.mark.parametrize("jobs", ["0", "two"])
def test_a_bad_jobs_option_is_a_usage_error(jobs: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "reference", "--jobs", jobs]) == 2
    err = capsys.readouterr().err.strip()
    assert "--jobs" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(("setting", "jobs"), [("3", 3), ("auto", lanes.automatic_jobs())])
def test_the_environment_sets_the_default_jobs(
    setting: str, jobs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []

    def record(implementation: Any, options: CheckOptions, **_: Any) -> Any:
        asked.append(options.jobs)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "check_implementation", record)
    monkeypatch.setenv(lanes.JOBS_SETTING, setting)
    assert main(["check", "reference", "--in-process"]) == 130  # stopped there
    assert asked == [jobs]
    monkeypatch.setenv(lanes.JOBS_SETTING, "many")
    assert main(["check", "reference"]) == 2


def test_lanes_load_the_target_as_the_run_does(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Isolation] = []
    monkeypatch.setattr(lanes.ProcessLane, "__init__", lambda s, t, o, i: made.append(i))
    options = CheckOptions(target="reference", jobs=3)
    with isolate("reference", "paper", Isolation(memory_limit=2**30)) as isolated:
        assert isinstance(isolated, IsolatedImplementation)
        assert len(lanes.start_lanes(isolated, options, clauses=10)) == 2
    assert made == [Isolation(memory_limit=2**30)] * 2
    in_process = load_target("reference", "paper")  # debugging: one process
    assert lanes.start_lanes(in_process, options, clauses=10) == []
    assert lanes.start_lanes(isolated, options, clauses=1) == []
    assert lanes.start_lanes(isolated, CheckOptions(jobs=3), clauses=10) == []  # no target


class _SlowToStart(_FakeLane):
    """A lane that starts only once stopped (it never takes a clause)."""

    def __init__(self, events: list[tuple[str, str]], lock: threading.Lock) -> None:
        super().__init__(events, lock)
        self.stopped = threading.Event()

    def start(self) -> bool:
        self.stopped.wait(timeout=60)
        return False

    def stop(self) -> None:
        self.stopped.set()


def test_a_run_over_before_a_lane_started_stops_it_rather_than_waiting() -> None:
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    slow = _SlowToStart(events, lock)

    def here(item: Check, blocked: Mapping[str, str]) -> ClauseResult:
        return _checked(item, blocked, events, lock)

    started = time.perf_counter()
    results = list(checked_in_order(ITEMS, here, [slow], ["float32"]))
    assert time.perf_counter() - started < 30
    assert [r.clause_id for r in results] == list("abcdef") and slow.stopped.is_set()
