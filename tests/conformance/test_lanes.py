"""A run spread over processes (``--jobs``, conformance.lanes and conformance.schedule): the
report is the one a single process writes, clause for clause, whatever checked each clause;
a clause waits for the clauses it depends on; a lane that is lost gives its clause back."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema
import pytest
from gallery.bugs import EpsIgnored

from normspec.adapters.registry import load_target
from normspec.cli import main
from normspec.conformance import isolation as isolation_module
from normspec.conformance import lanes, runner
from normspec.conformance.checks import Check
from normspec.conformance.findings import DtypePart, DtypeRun
from normspec.conformance.isolation import IsolatedImplementation, Isolation, isolate
from normspec.conformance.report_json import report_to_json, schema
from normspec.conformance.results import ClauseResult
from normspec.conformance.run_settings import OptionsError
from normspec.conformance.runner import CheckOptions, check_implementation, select_checks
from normspec.conformance.schedule import checked_in_order, dealt

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
    target: str, profile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = _run(target, profile, jobs=1)
    # this process waits for the lanes to start, so that they run dtypes (on a busy machine
    # it could otherwise finish before they have loaded the implementation)
    start, check, real = lanes.ProcessLane.start, lanes.ProcessLane.check, runner.CheckSession.check
    started: list[bool] = []
    all_started = threading.Event()
    checked: list[Check] = []

    def start_and_count(lane: lanes.ProcessLane) -> bool:
        started.append(start(lane))
        if len(started) == 2:
            all_started.set()
        return started[-1]

    def count_and_check(lane: lanes.ProcessLane, item: Check, *job: Any) -> Any:
        checked.append(item)
        return check(lane, item, *job)

    def after_the_lanes(session: runner.CheckSession, *job: Any) -> Any:
        all_started.wait(timeout=120)
        return real(session, *job)

    monkeypatch.setattr(lanes.ProcessLane, "start", start_and_count)
    monkeypatch.setattr(lanes.ProcessLane, "check", count_and_check)
    monkeypatch.setattr(runner.CheckSession, "check", after_the_lanes)
    spread = _run(target, profile, jobs=3)
    assert checked  # the lanes ran dtypes of some clauses
    assert [r.clause_id for r in spread.results] == [r.clause_id for r in alone.results]
    assert [_without_times(r) for r in spread.results] == [_without_times(r) for r in alone.results]
    assert spread.warnings == alone.warnings
    assert (alone.processes, spread.processes) == (1, 3)
    document = report_to_json(spread)
    jsonschema.validate(document, schema())
    assert document["processes"] == 3
    if profile == "torch":  # the bug fails bn.train.output and its dependents are skipped
        outcomes = {r.clause_id: r.outcome for r in spread.results}
        assert outcomes["bn.train.output"] == "fail"
        assert outcomes["bn.backward.train.dx"] == "skipped"


def test_a_lost_lane_says_why_and_gives_its_work_back() -> None:
    options = CheckOptions(target="reference", clauses="bn.train.output", max_examples=2, jobs=2)
    lane = lanes.ProcessLane("reference", options, Isolation())
    assert lane.start() and lane.worker.pid is not None
    lanes.os.kill(lane.worker.pid, lanes.signal.SIGKILL)  # killed from outside
    assert lane.check(select_checks("bn.train.output")[0], ("float32",), {}) is None
    (warning,) = lanes.close_lanes([lane])
    assert "a lane checking clauses beside this process ended (WorkerCrashed" in warning


DTYPES = ("float64", "float32", "float16", "bfloat16")


class _Recorder:
    """A checker (and, in a thread of this process, a lane) that records which dtypes of
    which clause ran where and when; clause ``a`` fails in float32."""

    def __init__(self, where: str, events: list[tuple[str, str, str, str]], lock: threading.Lock):
        self.where, self.events, self.lock = where, events, lock

    def start(self) -> bool:
        return True

    def stop(self) -> None:
        pass

    def settled(self, item: Check) -> ClauseResult | None:
        return None

    def check(
        self, item: Check, dtypes: Sequence[str], blocked: Mapping[str, str]
    ) -> dict[str, DtypePart] | None:
        parts = {}
        for dtype in dtypes:
            with self.lock:
                self.events.append(("start", item.clause_id, dtype, self.where))
            time.sleep(0.005)
            outcome = "fail" if (item.clause_id, dtype) == ("a", "float32") else "pass"
            parts[dtype] = DtypePart(DtypeRun("skipped" if dtype in blocked else outcome))
            with self.lock:
                self.events.append(("end", item.clause_id, dtype, self.where))
        return parts

    def merged(
        self, item: Check, parts: Mapping[str, DtypePart], blocked: Mapping[str, str]
    ) -> ClauseResult:
        result = ClauseResult(item.clause_id, "MUST", "", "pass", message=str(dict(blocked)))
        result.dtype_outcomes = {d: part.run.outcome for d, part in parts.items()}
        assert list(parts) == list(DTYPES)  # merged in the run's dtype order
        return result


class _Gone(_Recorder):
    def check(
        self, item: Check, dtypes: Sequence[str], blocked: Mapping[str, str]
    ) -> dict[str, DtypePart] | None:
        return None


def _item(clause_id: str, *depends_on: str) -> Check:
    return Check(clause_id, body=lambda ctx, data: None, depends_on=depends_on)


ITEMS = [_item("a"), _item("b"), _item("c", "a"), _item("d"), _item("e", "c", "b"), _item("f")]


@pytest.mark.parametrize("lane_count", [0, 1, 3])
def test_each_dtype_runs_once_after_its_dependencies_and_results_come_in_run_order(
    lane_count: int,
) -> None:
    events: list[tuple[str, str, str, str]] = []
    lock = threading.Lock()
    here = _Recorder("here", events, lock)
    recorders = [_Recorder(f"lane {n}", events, lock) for n in range(lane_count)]
    results = list(checked_in_order(ITEMS, here, recorders, DTYPES))
    assert [r.clause_id for r in results] == list("abcdef")
    starts = [e for e in events if e[0] == "start"]
    assert sorted(e[1:3] for e in starts) == sorted((i.clause_id, d) for i in ITEMS for d in DTYPES)
    for item in ITEMS:
        first = min(events.index(e) for e in starts if e[1] == item.clause_id)
        for dependency in item.depends_on:
            ends = [n for n, e in enumerate(events) if e[0] == "end" and e[1] == dependency]
            assert max(ends) < first
    messages = {r.clause_id: r.message for r in results}
    assert messages["c"] == "{'float32': 'a'}" and messages["e"] == "{'float32': 'c'}"
    if lane_count == 1:  # float64 and float16 here, float32 and bfloat16 in the lane, mostly
        ran = {(e[2], e[3]) for e in starts}
        assert ("float64", "here") in ran and ("float32", "lane 0") in ran


def test_dtypes_a_gone_lane_takes_run_here() -> None:
    events: list[tuple[str, str, str, str]] = []
    lock = threading.Lock()
    here = _Recorder("here", events, lock)
    gone = [_Gone("lane", events, lock) for _ in range(2)]
    results = list(checked_in_order(ITEMS, here, gone, DTYPES))
    assert [r.clause_id for r in results] == list("abcdef")
    assert {e[3] for e in events} == {"here"} and len(events) == 2 * len(ITEMS) * len(DTYPES)


def test_the_run_dtypes_are_dealt_out_in_turn() -> None:
    assert dealt(DTYPES, 2) == [
        frozenset({"float64", "float16"}),
        frozenset({"float32", "bfloat16"}),
    ]
    assert dealt(("float32",), 3) == [frozenset({"float32"}), frozenset(), frozenset()]


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


class _LaunchedLane:
    """A lane that records its launch and its closing, and never starts."""

    def __init__(self, events: list[str], target: str) -> None:
        self.events = events
        events.append(f"lane launched for {target}")
        self.lost: str | None = None

    def start(self) -> bool:
        return False

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self.events.append("lane closed")


@pytest.mark.parametrize("target", ["reference", "no_such_module:Layer"])
def test_check_launches_its_lanes_before_it_loads_the_target(
    monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """``normspec check`` launches its lanes first, so that they load the target while it
    does; they are closed however the run ends (here, a target that does not load: 2)."""
    events: list[str] = []
    loading = isolation_module.load_implementation

    def load(target: str, *args: Any, **kwargs: Any) -> Any:
        events.append(f"loading {target}")
        return loading(target, *args, **kwargs)

    monkeypatch.setattr(lanes, "ProcessLane", lambda t, o, i: _LaunchedLane(events, t))
    monkeypatch.setattr(isolation_module, "load_implementation", load)
    code = main(["check", target, "--clauses", "bn.train.*", "--max-examples", "2", "--jobs", "2"])
    assert events[:2] == [f"lane launched for {target}", f"loading {target}"]
    assert events[-1] == "lane closed"
    assert code == (0 if target == "reference" else 2)


class _SlowToStart(_Recorder):
    """A lane that starts only once stopped (it never takes a clause)."""

    def __init__(self, events: list[tuple[str, str, str, str]], lock: threading.Lock) -> None:
        super().__init__("slow", events, lock)
        self.stopped = threading.Event()

    def start(self) -> bool:
        self.stopped.wait(timeout=60)
        return False

    def stop(self) -> None:
        self.stopped.set()


def test_a_run_over_before_a_lane_started_stops_it_rather_than_waiting() -> None:
    events: list[tuple[str, str, str, str]] = []
    lock = threading.Lock()
    slow = _SlowToStart(events, lock)
    started = time.perf_counter()
    results = list(checked_in_order(ITEMS, _Recorder("here", events, lock), [slow], DTYPES))
    assert time.perf_counter() - started < 30
    assert [r.clause_id for r in results] == list("abcdef") and slow.stopped.is_set()
