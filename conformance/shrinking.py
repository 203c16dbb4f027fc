"""A time limit on shrinking one failure, and whether a run reached it.

Hypothesis shrinks a failing example for up to five minutes (its engine's
``MAX_SHRINKING_SECONDS``, left monkeypatchable for exactly this). Against an implementation
whose every call is slow (eager TensorFlow) or that compiles for every new shape (JAX),
shrinking dominates a check that finds failures; normspec bounds it per clause and says in
the report when the example it shows was still shrinking.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

#: Seconds Hypothesis may spend shrinking one failure in a default check: enough for most
#: shrinks of an implementation that answers in microseconds (a few seconds); a bound for
#: one whose every example costs tens of milliseconds (a failure whose example holds a
#: drawn float can take a thousand examples to shrink) or a compilation.
DEFAULT_SHRINK_SECONDS = 10.0


@dataclass
class ShrinkWatch:
    """What Hypothesis reported during a run (it reports only when shrinking stopped early)."""

    messages: list[str] = field(default_factory=list)

    def record(self, message: object) -> None:
        self.messages.append(str(message))

    @property
    def stopped_early(self) -> bool:
        return any("shrink" in m for m in self.messages)


@contextlib.contextmanager
def shrink_limit(seconds: float) -> Iterator[ShrinkWatch]:
    """Within the block, Hypothesis stops shrinking a failure after ``seconds`` and shows
    the smallest example found so far; its reports are collected, not printed."""
    # imported here: the pytest plugin reads DEFAULT_SHRINK_SECONDS when pytest starts
    from hypothesis.internal.conjecture import engine
    from hypothesis.reporting import with_reporter

    watch = ShrinkWatch()
    previous = engine.MAX_SHRINKING_SECONDS
    engine.MAX_SHRINKING_SECONDS = seconds  # type: ignore[assignment]  # read as a number
    try:
        with with_reporter(watch.record):
            yield watch
    finally:
        engine.MAX_SHRINKING_SECONDS = previous
