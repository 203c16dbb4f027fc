"""The order a run's clauses are checked in, by this process alone or with lanes beside it.

A clause is checked in each dtype of the run on its own (its share of the examples, its own
seed, shrink and verdict), once every clause it depends on has its result; in the dtypes
where one of those did not pass it is skipped (:func:`blocked_dtypes`). This process and
each :class:`Lane` (another process checking clauses of the same run,
:mod:`~normspec.conformance.lanes`, served by a thread of its own that only waits on it)
take the first ready clause in run order that has dtypes of their own left, the run's
dtypes being dealt out among them (float64 here, float32 to the first lane, ...), so that a
framework that compiles per dtype and shape compiles each program in one process; with
nothing of its own ready, one helps with another's dtype. A clause's result, merged from
its dtypes' runs, comes back in run order whoever ran them: it depends on the clause, the
run's options and the results of the clauses it depends on, never on where its dtypes ran
or what ran there before. A lane takes its first clause once it has started (loaded the
implementation); one still starting when the run is over is stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from normspec.adapters.protocol import DTypeName
from normspec.conformance.checks import Check
from normspec.conformance.findings import DtypePart
from normspec.conformance.results import PROBLEMS, ClauseResult


class Checker(Protocol):
    """How this process checks a clause (:class:`~normspec.conformance.runner.CheckSession`)."""

    def settled(self, item: Check) -> ClauseResult | None:
        """The result of a clause checked in no dtype (not applicable); else ``None``."""

    def check(
        self, item: Check, dtypes: Sequence[DTypeName], blocked: Mapping[str, str]
    ) -> dict[str, DtypePart]:
        """The runs of ``item``'s check in ``dtypes``, skipped in those of ``blocked`` (a
        dtype to the clause it depends on that did not pass there)."""

    def merged(
        self, item: Check, parts: Mapping[str, DtypePart], blocked: Mapping[str, str]
    ) -> ClauseResult:
        """The clause's result from its runs in every dtype, in the run's dtype order."""


class Lane(Protocol):
    """Another process checking clauses of the run."""

    def start(self) -> bool:
        """Wait until the lane can check clauses; ``False`` where it cannot (it is gone)."""

    def check(
        self, item: Check, dtypes: Sequence[DTypeName], blocked: Mapping[str, str]
    ) -> dict[str, DtypePart] | None:
        """As :meth:`Checker.check`, in the lane; ``None`` where the lane is gone (the
        dtypes go back to the others)."""

    def stop(self) -> None:
        """End the lane at once, from another thread (its clause in progress is dropped)."""


def not_passing_dtypes(result: ClauseResult, dtypes: Sequence[str]) -> set[str]:
    """The dtypes a clause did not pass in (a fail, an error, a crash, a hang or a skip):
    per dtype where it ran per dtype, else all of them where the clause as a whole did not."""
    if result.dtype_outcomes:
        return {d for d, o in result.dtype_outcomes.items() if o in (*PROBLEMS, "skipped")}
    return set(dtypes) if result.outcome in (*PROBLEMS, "skipped") else set()


def blocked_dtypes(
    depends_on: Sequence[str], not_passed: Mapping[str, set[str]], dtypes: Sequence[str]
) -> dict[str, str]:
    """Per dtype, the first clause of ``depends_on`` that did not pass in it."""
    blocked: dict[str, str] = {}
    for dtype in dtypes:
        behind = next((d for d in depends_on if dtype in not_passed.get(d, ())), None)
        if behind is not None:
            blocked[dtype] = behind
    return blocked


def dealt(dtypes: Sequence[str], hands: int) -> list[frozenset[str]]:
    """The run's dtypes dealt out among ``hands`` processes (this one first), in turn."""
    return [frozenset(dtypes[hand::hands]) for hand in range(hands)]


#: A clause, the dtypes to run it in, and the dtypes it is skipped in (with the clause why).
Job = tuple[Check, tuple[DTypeName, ...], dict[str, str]]


class _Board:
    """What is left to run, what runs and what is done; every change under :attr:`changed`."""

    def __init__(
        self, checks: Sequence[Check], checker: Checker, dtypes: Sequence[DTypeName]
    ) -> None:
        self.changed = threading.Condition()
        self.checker = checker
        self.dtypes = tuple(dtypes)
        self.order = [item.clause_id for item in checks]
        self.items = {item.clause_id: item for item in checks}
        #: per clause to run, its dtypes not handed out yet (in the run's order)
        self.left: dict[str, list[DTypeName]] = {}
        #: per clause to run, its dtypes' runs so far
        self.parts: dict[str, dict[str, DtypePart]] = {}
        #: per clause handed out, the dtypes it is skipped in
        self.blocked: dict[str, dict[str, str]] = {}
        self.results: dict[str, ClauseResult] = {}
        #: per clause done, the dtypes it did not pass in
        self.not_passed: dict[str, set[str]] = {}
        #: results handed on so far (the first ``emitted`` of :attr:`order`)
        self.emitted = 0
        self.stopped = False
        for item in checks:
            settled = checker.settled(item)
            if settled is not None:
                self._record(item.clause_id, settled)
            else:
                self.left[item.clause_id] = list(self.dtypes)
                self.parts[item.clause_id] = {}

    def take(self, own: frozenset[str]) -> Job | None:
        """The first ready clause (its dependencies done) with dtypes of ``own`` left, those
        now taken; else one dtype of the first ready clause; ``None`` where none is ready."""
        if self.stopped:
            return None
        unfinished = set(self.order) - set(self.results)
        ready = [
            clause
            for clause in self.order
            if self.left.get(clause) and not unfinished.intersection(self.items[clause].depends_on)
        ]
        for clause in ready:
            mine = tuple(d for d in self.left[clause] if d in own)
            if mine:
                return self._hand_out(clause, mine)
        return self._hand_out(ready[0], (self.left[ready[0]][0],)) if ready else None

    def _hand_out(self, clause: str, dtypes: tuple[DTypeName, ...]) -> Job:
        item = self.items[clause]
        self.left[clause] = [d for d in self.left[clause] if d not in dtypes]
        if clause not in self.blocked:
            self.blocked[clause] = blocked_dtypes(item.depends_on, self.not_passed, self.dtypes)
        return item, dtypes, self.blocked[clause]

    def anything_left(self) -> bool:
        return any(self.left.values())

    def done(self, job: Job, parts: dict[str, DtypePart] | None) -> None:
        """Record a job's runs, the clause's result once it ran in every dtype; ``None``
        gives the job's dtypes back."""
        item, dtypes, blocked = job
        clause = item.clause_id
        if parts is None:
            self.left[clause] = [d for d in self.dtypes if d in (*self.left[clause], *dtypes)]
        else:
            self.parts[clause].update(parts)
            if len(self.parts[clause]) == len(self.dtypes):
                ordered: dict[str, DtypePart] = {d: self.parts[clause][d] for d in self.dtypes}
                self._record(clause, self.checker.merged(item, ordered, blocked))
        self.changed.notify_all()

    def _record(self, clause: str, result: ClauseResult) -> None:
        self.results[clause] = result
        self.not_passed[clause] = not_passing_dtypes(result, self.dtypes)

    def in_order(self) -> list[ClauseResult]:
        """The results not handed on yet whose clauses come before every unfinished one."""
        ready: list[ClauseResult] = []
        while self.emitted < len(self.order) and self.order[self.emitted] in self.results:
            ready.append(self.results[self.order[self.emitted]])
            self.emitted += 1
        return ready


def checked_in_order(
    checks: Sequence[Check],
    checker: Checker,
    lanes: Sequence[Lane],
    dtypes: Sequence[DTypeName],
) -> Iterator[ClauseResult]:
    """Each clause's result, in run order: its dtypes run by ``checker`` in this process or
    by ``lanes``. Leaving early (an exception, a Ctrl-C) stops the lanes."""
    board = _Board(checks, checker, dtypes)
    own, *theirs = dealt(dtypes, 1 + len(lanes))
    threads = [
        threading.Thread(target=_serve, args=(lane, hand, board), name="normspec-lane", daemon=True)
        for lane, hand in zip(lanes, theirs, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        while board.emitted < len(board.order):
            with board.changed:
                job = board.take(own)
                ready = board.in_order()
                if job is None and not ready:
                    board.changed.wait()
                    continue
            yield from ready
            if job is not None:
                parts = checker.check(*job)
                with board.changed:
                    board.done(job, parts)
    finally:
        with board.changed:
            board.stopped = True
            board.changed.notify_all()
        finished = board.emitted == len(board.order)
        for lane, thread in zip(lanes, threads, strict=True):
            if not finished or thread.is_alive():  # interrupted, or still starting
                lane.stop()
        for thread in threads:
            thread.join()


def _serve(lane: Lane, own: frozenset[str], board: _Board) -> None:
    """A lane's thread: once the lane has started, run the jobs it takes until nothing is
    left to hand out or it is gone."""
    if not lane.start():
        return
    while True:
        with board.changed:
            job = board.take(own)
            while job is None and board.anything_left() and not board.stopped:
                board.changed.wait()  # what is left waits for a clause being checked
                job = board.take(own)
        if job is None:
            return
        parts: dict[str, DtypePart] | None = None
        try:
            parts = lane.check(*job)
        finally:
            with board.changed:
                board.done(job, parts)
        if parts is None:
            return


__all__ = [
    "Checker",
    "Lane",
    "blocked_dtypes",
    "checked_in_order",
    "dealt",
    "not_passing_dtypes",
]
