"""Examples a dtype's run has already seen, answered from memory instead of run again.

While Hypothesis shrinks a failure it tries many choice sequences that draw a case already
run: a float that rounds to the same float16 value, a choice the strategy does not use. A
third to a half of a shrink's examples repeat one (measured on tf_keras and on Flax's
``sync.train.mask``), and each costs as much as a new one: the draws, the implementation's
calls, the reference. A check is a deterministic function of what it draws and of what the
implementation answers, so an example that drew, before its first call into the
implementation, exactly what an earlier one drew, and whose earlier run drew nothing after
that call, ends as the earlier one ended: :class:`Repeats` answers it with that ending (the
same exception, or none) without calling the implementation again.

What is never answered from memory: an example that drew after its first call (its later
draws could differ) or drew what a fingerprint cannot tell apart (:class:`Unlike`), one where the implementation refused a configuration (the refusals in
a row decide a clause's applicability), one that ended in anything but a pass, a violation,
an error the implementation raised or an assumption (a crash, a hang: the run's own state
changed), and Hypothesis's final replay of a failure (``is_final``), which always calls the
implementation, so that every reported example was run as reported.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np
from hypothesis.control import current_build_context
from hypothesis.errors import UnsatisfiedAssumption

from normspec.conformance.context import CheckContext, Violation
from normspec.conformance.guard import ImplementationError, ImplementationLost

#: What may end an example answered from memory, besides a pass (the module's docstring).
REMEMBERED = (Violation, ImplementationError, UnsatisfiedAssumption)


#: Leaves a fingerprint takes by their ``repr``, which tells apart any two that differ.
EXACT_REPR = (int, float, complex, str, bytes, type(None), np.generic, enum.Enum)


class Unlike(Exception):
    """A drawn value a fingerprint cannot tell apart from every other (an object shown by
    its address, which a later object may take): its example is never remembered."""


def fingerprint(value: object, into: Any) -> None:
    """Feed ``value`` to the hash ``into``: arrays by dtype, shape, strides and contents,
    dataclasses field by field, sequences and mappings item by item, numbers and strings by
    type and ``repr`` (exact for numbers); :class:`Unlike` for anything else."""
    if isinstance(value, np.ndarray):
        into.update(f"a{value.dtype.str}{value.shape}{value.strides}".encode())
        into.update(np.ascontiguousarray(value).tobytes())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        into.update(f"d{type(value).__qualname__}(".encode())
        for item in dataclasses.fields(value):
            fingerprint(getattr(value, item.name), into)
        into.update(b")")
    elif isinstance(value, (list, tuple)):
        into.update(f"s{type(value).__name__}{len(value)}[".encode())
        for item in value:
            fingerprint(item, into)
        into.update(b"]")
    elif isinstance(value, dict):
        into.update(f"m{len(value)}{{".encode())
        for key, item in value.items():
            fingerprint(key, into)
            fingerprint(item, into)
        into.update(b"}")
    elif isinstance(value, EXACT_REPR):
        into.update(f"v{type(value).__qualname__}:{value!r};".encode())
    else:
        raise Unlike(type(value).__qualname__)


class Answered(BaseException):
    """Raised at an example's first call where an earlier example ended as this one will
    (a BaseException, so that no check's handler takes it)."""

    def __init__(self, ending: Ending) -> None:
        super().__init__()
        self.ending = ending


@dataclasses.dataclass(frozen=True)
class Ending:
    """How an example ended, and what it left in its context (the case, the notes, the
    layers it built), to be left again by an example answered from memory."""

    problem: BaseException | None
    traceback: TracebackType | None
    case: Any
    notes: dict[str, Any]
    built: int

    def repeat(self, ctx: CheckContext) -> None:
        """Leave in ``ctx`` what the example left, and end as it ended."""
        ctx.case, ctx.notes = self.case, dict(self.notes)
        ctx.built += self.built
        if self.problem is not None:
            raise self.problem.with_traceback(self.traceback)


class DrawRecorder:
    """The check's ``data``: draws through Hypothesis's, each drawn value fingerprinted."""

    def __init__(self, data: Any) -> None:
        self._data = data
        self._hash = hashlib.blake2b(digest_size=16)
        #: what was drawn before the first call (``None`` until it was made)
        self.before_call: bytes | None = None
        #: whether its ending may be remembered: it drew nothing after its first call, and
        #: nothing a fingerprint cannot tell apart before
        self.rememberable = True
        self.called = False
        #: the values drawn (:func:`~normspec.conformance.context.let_go` keeps them)
        self.drawn: list[Any] = []

    def draw(self, strategy: Any, label: Any = None) -> Any:
        value = self._data.draw(strategy, label=label)
        self.drawn.append(value)
        if self.called:
            self.rememberable = False
        elif self.rememberable:
            try:
                fingerprint(value, self._hash)
            except Unlike:
                self.rememberable = False
        return value

    def first_call(self) -> bytes | None:
        """Mark the example's first call; what it drew until then, if it can be told."""
        self.called = True
        self.before_call = self._hash.digest() if self.rememberable else None
        return self.before_call


class Repeats:
    """The endings of a dtype's run's examples, by what each drew before its first call."""

    def __init__(self) -> None:
        self._endings: dict[bytes, Ending] = {}
        self._example: DrawRecorder | None = None
        #: examples answered from memory (benchmarks, tests)
        self.answered = 0

    def calling(self) -> None:
        """Before each call into the implementation (``CheckContext.call``): at the first of
        an example that repeats a remembered one, :class:`Answered`."""
        example = self._example
        if example is None or example.called:
            return
        drawn = example.first_call()
        ending = None if drawn is None else self._endings.get(drawn)
        if ending is not None and not current_build_context().is_final:
            raise Answered(ending)

    def run(self, ctx: CheckContext, data: Any, body: Callable[[CheckContext, Any], None]) -> None:
        """Run one example of ``body``, or answer it from memory."""
        example = self._example = DrawRecorder(data)
        built, refused = ctx.built, ctx.refused
        ending: Ending | None = None
        try:
            body(ctx, example)
        except Answered as answered:
            ending = answered.ending
        except BaseException as problem:
            self._remember(ctx, example, (built, refused), problem)
            raise
        else:
            self._remember(ctx, example, (built, refused), None)
            return
        finally:
            self._example = None
        self.answered += 1
        ending.repeat(ctx)  # raised here, outside the handler: no exception as its context

    def _remember(
        self,
        ctx: CheckContext,
        example: DrawRecorder,
        counts: tuple[int, int],
        problem: BaseException | None,
    ) -> None:
        """Remember how ``example`` ended (``counts``: the layers built and configurations
        refused before it), where an example drawing the same is sure to end so too."""
        built, refused = counts
        drawn = example.before_call
        if drawn is None or not example.rememberable or ctx.refused != refused:
            return
        if problem is not None and (
            not isinstance(problem, REMEMBERED) or isinstance(problem, ImplementationLost)
        ):
            return
        traceback = problem.__traceback__ if problem is not None else None
        ending = Ending(problem, traceback, ctx.case, dict(ctx.notes), ctx.built - built)
        self._endings.setdefault(drawn, ending)
