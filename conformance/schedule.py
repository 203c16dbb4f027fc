"""The order a run's clauses are checked in, by this process alone or with lanes beside it.

A clause is checked once every clause it depends on has its result, skipped in the dtypes
where one of those did not pass (:func:`blocked_dtypes`). This process takes the first
waiting clause that is ready, in run order, checks it, and takes the next; each
:class:`Lane` (another process checking clauses of the same run,
:mod:`~normspec.conformance.lanes`) does the same from a thread of its own, which only waits
on the lane. Results come back in run order whoever checked them: a clause's result depends
on the clause, the run's options and the results of the clauses it depends on, never on
where it ran or what ran there before it. A lane takes its first clause once it has
started (loaded the implementation); one still starting when the run is over is stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from normspec.conformance.checks import Check
from normspec.conformance.results import PROBLEMS, ClauseResult

#: Checks one clause: the check and, per dtype it is skipped in, the clause behind that.
CheckOne = Callable[[Check, Mapping[str, str]], ClauseResult]


class Lane(Protocol):
    """Another process checking clauses of the run."""

    def start(self) -> bool:
        """Wait until the lane can check clauses; ``False`` where it cannot (it is gone)."""

    def check(self, item: Check, blocked: Mapping[str, str]) -> ClauseResult | None:
        """``item``'s result, as :data:`CheckOne`; ``None`` where the lane is gone (the
        clause goes back to the others)."""

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


class _Board:
    """The clauses waiting, being checked and done; every change under :attr:`changed`."""

    def __init__(self, checks: Sequence[Check], dtypes: Sequence[str]) -> None:
        self.changed = threading.Condition()
        self.order = [item.clause_id for item in checks]
        self.waiting = list(checks)
        self.results: dict[str, ClauseResult] = {}
        #: per clause done, the dtypes it did not pass in
        self.not_passed: dict[str, set[str]] = {}
        self.dtypes = dtypes
        #: results handed on so far (the first ``emitted`` of :attr:`order`)
        self.emitted = 0
        self.stopped = False

    def take(self) -> tuple[Check, dict[str, str]] | None:
        """The first waiting clause whose dependencies all have results, now taken, with
        the dtypes it is skipped in; ``None`` where none is ready."""
        if self.stopped:
            return None
        unfinished = set(self.order) - set(self.results)
        for index, item in enumerate(self.waiting):
            if not unfinished.intersection(item.depends_on):
                del self.waiting[index]
                return item, blocked_dtypes(item.depends_on, self.not_passed, self.dtypes)
        return None

    def done(self, item: Check, result: ClauseResult | None) -> None:
        """Record ``item``'s result; ``None`` puts it back, in its place in run order."""
        if result is None:
            position = self.order.index(item.clause_id)
            after = [self.order.index(w.clause_id) > position for w in self.waiting]
            self.waiting.insert(after.index(True) if True in after else len(after), item)
        else:
            self.results[item.clause_id] = result
            self.not_passed[item.clause_id] = not_passing_dtypes(result, self.dtypes)
        self.changed.notify_all()

    def in_order(self) -> list[ClauseResult]:
        """The results not handed on yet whose clauses come before every unfinished one."""
        ready: list[ClauseResult] = []
        while self.emitted < len(self.order) and self.order[self.emitted] in self.results:
            ready.append(self.results[self.order[self.emitted]])
            self.emitted += 1
        return ready


def checked_in_order(
    checks: Sequence[Check],
    check_here: CheckOne,
    lanes: Sequence[Lane],
    dtypes: Sequence[str],
) -> Iterator[ClauseResult]:
    """Each clause's result, in run order: checked by ``check_here`` in this process or by
    one of ``lanes``. Leaving early (an exception, a Ctrl-C) stops the lanes."""
    board = _Board(checks, dtypes)
    threads = [
        threading.Thread(target=_serve, args=(lane, board), name="normspec-lane", daemon=True)
        for lane in lanes
    ]
    for thread in threads:
        thread.start()
    try:
        while board.emitted < len(board.order):
            with board.changed:
                job = board.take()
                ready = board.in_order()
                if job is None and not ready:
                    board.changed.wait()
                    continue
            yield from ready
            if job is not None:
                item, blocked = job
                result = check_here(item, blocked)
                with board.changed:
                    board.done(item, result)
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


def _serve(lane: Lane, board: _Board) -> None:
    """A lane's thread: once the lane has started, check the ready clauses it takes until
    none is left or it is gone."""
    if not lane.start():
        return
    while True:
        with board.changed:
            job = board.take()
            while job is None and board.waiting and not board.stopped:
                board.changed.wait()  # what waits depends on a clause being checked
                job = board.take()
        if job is None:
            return
        item, blocked = job
        result: ClauseResult | None = None
        try:
            result = lane.check(item, blocked)
        finally:
            with board.changed:
                board.done(item, result)
        if result is None:
            return


__all__ = ["CheckOne", "Lane", "blocked_dtypes", "checked_in_order", "not_passing_dtypes"]
