"""Strategy objects made once per argument list and reused.

Hypothesis validates every new strategy object on its first draw (its arguments, its
emptiness, its label): a strategy built afresh inside a composite for every example costs
that validation at every draw, and such validations were a fifth of a default check's time.
A factory wrapped by :func:`reused` returns the same object for equal hashable arguments;
the values drawn from it, and so every example, are unchanged.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from hypothesis import strategies as st

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
P = ParamSpec("P")

#: Strategies kept per factory; the oldest is dropped beyond (a run's distinct argument
#: lists are far fewer: shapes, dtypes and options recur across examples and clauses).
LIMIT = 4096


def argument_key(value: Any) -> Hashable:
    """``value`` with its type (``1``, ``1.0`` and ``True`` differ; floats by their bits:
    ``-0.0`` and NaN are keys too), tuples and lists element by element (a strategy holds
    what it was given, and a list drawn from must not change after), a frozen dataclass
    holding a dict (``Capabilities``) by identity; ``TypeError`` for another unhashable
    value."""
    if isinstance(value, float):
        return float, struct.pack("<d", value)
    if isinstance(value, (tuple, list)):
        return type(value), tuple(argument_key(v) for v in value)
    try:
        hash(value)
    except TypeError:
        params = getattr(type(value), "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise
        return type(value), id(value)
    return type(value), value


def reused(factory: F) -> F:
    """``factory`` (a function returning a strategy) returning one object per distinct
    argument list; a call with an unhashable argument (an array) builds a new one."""
    made: dict[Hashable, Any] = {}

    @functools.wraps(factory)
    def strategy(*args: Any, **kwargs: Any) -> Any:
        try:
            key = (argument_key(args), argument_key(tuple(sorted(kwargs.items()))))
        except TypeError:
            return factory(*args, **kwargs)
        found = made.get(key)
        if found is None:
            if len(made) >= LIMIT:
                del made[next(iter(made))]
            # the arguments kept beside it: an identity in the key stays theirs
            found = made[key] = (factory(*args, **kwargs), args, kwargs)
        return found[0]

    return strategy  # type: ignore[return-value]


class InlineComposite(Generic[P, T]):
    """A composite strategy that a composite can also draw inline.

    Called, it is Hypothesis's ``st.composite`` of ``function``, one object per hashable
    argument list (:func:`reused`): the public strategy. ``inline(draw, *args)`` runs
    ``function`` with a composite's own ``draw`` instead: the same choices, but no strategy
    object and no span of its own. Arguments that change at every example (a shape, an
    array) would make a new object at every draw, and Hypothesis validates each new object
    at its first draw (about 150 microseconds); such validations were a tenth of a check's
    time.
    """

    def __init__(self, function: Callable[Concatenate[st.DrawFn, P], T]) -> None:
        functools.update_wrapper(self, function)
        self.inline = function
        self._strategy = reused(st.composite(function))

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> st.SearchStrategy[T]:
        strategy: st.SearchStrategy[T] = self._strategy(*args, **kwargs)
        return strategy


def inline_composite(
    function: Callable[Concatenate[st.DrawFn, P], T],
) -> InlineComposite[P, T]:
    """``function`` (a composite's body: ``draw`` first) as an :class:`InlineComposite`."""
    return InlineComposite(function)


@reused
def made(factory: Callable[..., st.SearchStrategy[T]], *args: Any, **kwargs: Any) -> Any:
    """``factory(*args, **kwargs)``, one object per factory and argument list (a chapter's
    case strategy, called with the context's options at every example)."""
    return factory(*args, **kwargs)


@reused
def _sampled(values: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


def sampled(values: Sequence[T]) -> st.SearchStrategy[T]:
    """``st.sampled_from(values)``, one object per distinct tuple of values."""
    strategy: st.SearchStrategy[T] = _sampled(tuple(values))
    return strategy


__all__ = [
    "LIMIT",
    "InlineComposite",
    "argument_key",
    "inline_composite",
    "made",
    "reused",
    "sampled",
]
