"""What a check body works with: drawing cases, calling the implementation, expectations."""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from hypothesis import reject
from hypothesis.control import current_build_context
from hypothesis.strategies import SearchStrategy
from numpy.typing import NDArray

from normspec.adapters.protocol import (
    Array,
    Capabilities,
    Chapter,
    DTypeName,
    Implementation,
    Layer,
    UnsupportedConfig,
    WrongOutput,
)
from normspec.conformance.discards import RunEnded
from normspec.conformance.dtypes import Ulps
from normspec.conformance.guard import Guard, ImplementationError, ImplementationLost
from normspec.conformance.isolation import IsolatedImplementation
from normspec.conformance.menu import Menu
from normspec.conformance.reuse import made
from normspec.conformance.strategies import Case, cases
from normspec.conformance.strategies_family import group_cases, layer_cases
from normspec.conformance.strategies_renorm import renorm_cases
from normspec.conformance.strategies_replicas import replica_cases
from normspec.conformance.tolerance import Comparison, Precision
from normspec.messages import strided_copy
from normspec.reference import Affine, BatchNormConfig, RunningStatistics
from normspec.reference.dialects import Dialect

if TYPE_CHECKING:
    from normspec.conformance.repeats import Repeats

#: The strategy each chapter's cases are drawn from (``CheckContext.draw_case``), called with
#: the capabilities, the dialect, the dtypes and a check's options: the one place a chapter
#: names its strategy.
CASE_STRATEGIES: dict[Chapter, Callable[..., SearchStrategy[Any]]] = {
    "batchnorm": cases,
    "ghost_batches": cases,
    "replicas": replica_cases,
    "renorm": renorm_cases,
    "layernorm": partial(layer_cases, kind="layernorm"),
    "rmsnorm": partial(layer_cases, kind="rmsnorm"),
    "groupnorm": partial(group_cases, kind="groupnorm"),
    "instancenorm": partial(group_cases, kind="instancenorm"),
}
#: The chapters whose settings come from the run's :class:`Menu` (the family chapters draw
#: theirs from their own menus' entries, which their checks pass).
MENU_CHAPTERS: frozenset[Chapter] = frozenset({"batchnorm", "ghost_batches", "replicas", "renorm"})

#: Unsupported configurations in a row, none built, after which a check whose every case
#: has what it offers in common (see CheckContext.build) reports its clause not applicable.
UNSUPPORTED_IN_A_ROW = 3

CaseT = TypeVar("CaseT", bound=Case[Any])

#: The bounds a clause holds results to (see CheckContext.bounds).
Bounds = Literal["value", "accuracy", "gross"]
PRECISIONS: dict[Bounds, Callable[[str], Precision]] = {
    "value": Precision.storage,
    "accuracy": Precision.of,
    "gross": Precision.gross,
}


def layout_copy(array: NDArray[Any]) -> NDArray[Any]:
    """A copy of ``array`` with the same strides (a strided view stays a strided view)."""
    if array.flags.c_contiguous or array.flags.f_contiguous or array.size == 0:
        return array.copy(order="K")
    return strided_copy(array, array.strides)


class NotOffered(RunEnded):
    """The implementation refused the configuration every case of a check has in common
    (:meth:`CheckContext.build` with ``offered``): the clause cannot be exercised in the
    dtype being checked (conformance.findings: not applicable there, unless every dtype
    refuses it)."""


class Violation(Exception):
    """The implementation broke the clause being checked on the current example.

    ``kind`` names the way it broke it in a report's findings (conformance.results.KINDS);
    each kind is its own class, so that Hypothesis shrinks each separately.
    """

    kind = "requirement_not_met"

    def __init__(self, message: str, comparison: Comparison | None = None) -> None:
        super().__init__(message)
        self.comparison = comparison


class OutOfBound(Violation):
    """A compared value is outside its error bound (``ctx.expect``)."""

    kind = "out_of_bound"


class NonFinite(Violation):
    """A NaN or an infinity where the reference is finite (``ctx.expect``)."""

    kind = "non_finite"


class RequirementNotMet(Violation):
    """A condition the clause requires does not hold (``ctx.require``)."""

    kind = "requirement_not_met"


@dataclass
class Observed:
    """What a check had drawn when something was raised: its example and notes, kept on the
    exception (:func:`observe`), since Hypothesis replays several failures one after another."""

    example: dict[str, Any] | None
    notes: dict[str, Any]


def observe(problem: BaseException, ctx: CheckContext) -> BaseException:
    """Keep the current example and notes on ``problem`` (once: the innermost raise wins)."""
    if getattr(problem, "normspec_observed", None) is None:
        case = getattr(ctx, "case", None)  # (a context a test built without its fields)
        example = None if case is None else case.summary()
        notes = dict(getattr(ctx, "notes", None) or {})
        problem.normspec_observed = Observed(example, notes)  # type: ignore[attr-defined]
    return problem


def let_go(problem: BaseException, drawn: Sequence[Any]) -> None:
    """Clear the locals of the finished frames in the tracebacks of ``problem`` and of the
    exceptions it was raised from, keeping on ``problem`` the values its example ``drawn``;
    nothing in Hypothesis's final replay of a failure.

    Hypothesis keeps the exception of every failing example it tries while it shrinks, and
    :class:`~normspec.conformance.repeats.Repeats` the ending of every example it remembers:
    their frames' locals would keep each example's layers alive until the dtype's run ends,
    and with them the layers a worker holds for them, which a layer pool would otherwise
    lend again. The drawn values live on as long as the exception, as they did in its
    frames: Hypothesis's shrinker reuses the values it recorded for an example's draws while
    they live (it holds them weakly). The final replay keeps its frames for the report
    (pytest reads their locals). The code, file and line of each frame stay: Hypothesis
    tells failures apart by them.
    """
    if current_build_context().is_final:
        return
    problem.normspec_drawn = tuple(drawn)  # type: ignore[attr-defined]
    seen: set[int] = set()
    found: BaseException | None = problem
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        traceback.clear_frames(found.__traceback__)
        found = found.__cause__ or found.__context__


def observed(problem: BaseException) -> Observed | None:
    """The example and notes kept on ``problem`` by :func:`observe`, if any."""
    found = getattr(problem, "normspec_observed", None)
    return found if isinstance(found, Observed) else None


@dataclass
class CheckContext:
    """One check's view of the implementation under test, the profile and the dtypes."""

    implementation: Implementation
    capabilities: Capabilities
    dialect: Dialect
    dtypes: tuple[DTypeName, ...]
    guard: Guard
    examples: int = 0
    case: Case[Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    #: layers built in this check, and configurations the implementation refused
    built: int = 0
    refused: int = 0
    #: the bounds results are held to: ``value`` (the value clauses: the dtype's own
    #: precision, raw moments admitted), ``accuracy`` (the accuracy clauses: float32
    #: working precision for reduced dtypes) or ``gross`` (bn.accuracy.no_gross_error)
    bounds: Bounds = "value"
    #: the settings cases are drawn from (an implementation that compiles per shape), per
    #: dtype; empty: drawn freely
    menus: dict[str, Menu] = field(default_factory=dict)
    #: the worst error in ulps over the comparisons that passed (Comparison.significant)
    worst: Ulps | None = None
    #: the examples of the dtype's run being checked, told of each call (an example that
    #: repeats an earlier one is answered from memory at its first)
    repeats: Repeats | None = None

    @property
    def menu(self) -> Menu | None:
        """The menu of the dtype being checked (one at a time), if there is one."""
        return self.menus.get(self.dtypes[0]) if len(self.dtypes) == 1 else None

    def precision(self, dtype: str) -> Precision:
        """The precision bounds are computed for (conventions: accuracy model).

        Accuracy clauses assume statistics accumulated in float32 at least; value clauses
        only the dtype's own precision, so that they judge the mathematics, not the
        accumulation; the gross line (conventions: gross error) half the dtype's digits.
        """
        return PRECISIONS[self.bounds](dtype)

    def begin_check(self) -> None:
        """Forget the previous check's examples, case, notes, builds and worst error."""
        self.examples, self.case, self.notes, self.worst = 0, None, {}, None
        self.built = self.refused = 0

    def begin_dtype(self) -> None:
        """Count builds and refusals afresh for a dtype's run: a configuration may be
        refused in one dtype only (:meth:`build`)."""
        self.built = self.refused = 0

    def start(self, case: CaseT) -> CaseT:
        """A new example with ``case``: counted, its notes empty, its case recorded."""
        self.examples += 1
        self.notes = {}
        self.case = case
        return case

    def cases_of(self, chapter: Chapter = "batchnorm", **options: Any) -> SearchStrategy[Any]:
        """The cases of ``chapter`` for this implementation: the chapter's strategy
        (:data:`CASE_STRATEGIES`; ``options`` are the strategy's), its settings from the
        run's menu where the chapter draws from one (:data:`MENU_CHAPTERS`)."""
        if chapter in MENU_CHAPTERS:
            options = {"menu": self.menu, **options}
        strategy = CASE_STRATEGIES[chapter]
        return made(strategy, self.capabilities, self.dialect, self.dtypes, **options)

    def draw_case(self, data: Any, chapter: Chapter = "batchnorm", **options: Any) -> Case[Any]:
        """Start an example with a case of ``chapter`` (:meth:`cases_of`)."""
        drawn: Case[Any] = data.draw(self.cases_of(chapter, **options))
        return self.start(drawn)

    def use_case(self, case: Case[Any]) -> Case[Any]:
        """Record a case a check derived from a drawn one (for the report)."""
        self.case = case
        return case

    def call(
        self, operation: str, function: Any, *args: Any, copy_inputs: bool = True, **kwargs: Any
    ) -> Any:
        """Call into the implementation; its misbehaviour becomes an ImplementationError.

        Array arguments are passed as copies in the same memory layout, so an implementation
        that writes into its input cannot corrupt the expected values (``copy_inputs=False``
        is for conv.io.inputs_unmodified, which watches for exactly that).
        """
        if self.repeats is not None:
            self.repeats.calling()
        if copy_inputs:
            args = tuple(layout_copy(a) if isinstance(a, np.ndarray) else a for a in args)
        try:
            return self.guard.call(operation, function, *args, **kwargs)
        except WrongOutput as problem:
            raise observe(Violation(f"{operation}: {problem}"), self) from problem
        except ImplementationError as problem:
            observe(problem, self)
            raise

    def attempt(self, operation: str, function: Any, *args: Any) -> tuple[bool, Any]:
        """:meth:`call` where raising is an allowed answer (degenerate input, invalid
        parameters): ``(True, None)`` if the implementation raised, else ``(False, result)``.
        A crash or a hang is never an answer: it propagates."""
        try:
            return False, self.call(operation, function, *args)
        except ImplementationLost:
            raise
        except ImplementationError:
            return True, None

    def attempt_build(self, case: Case[Any]) -> Layer | None:
        """:meth:`build` where refusing is an allowed answer (invalid parameters): the layer,
        or ``None`` if the implementation raised. A crash or a hang is never an answer: it
        propagates."""
        try:
            return self.build(case)
        except ImplementationLost:
            raise
        except ImplementationError:
            return None

    def build(
        self,
        case: Case[Any],
        *,
        set_parameters: bool = True,
        set_state: bool = True,
        copy_inputs: bool = True,
        may_refuse: bool = False,
        offered: str | None = None,
    ) -> Layer:
        """Build a layer for the case and give it the case's parameters and state (three
        operations; for an implementation in a worker process, one request).

        With ``may_refuse`` (a chapter whose cases the capabilities cannot fully describe,
        renorm's schedules) the implementation may refuse the configuration
        (``UnsupportedConfig``): the example is discarded. With ``offered`` as well (what
        every case of the check has in common, say the paper's schedule), a check that has
        built nothing yet and met :data:`UNSUPPORTED_IN_A_ROW` refusals ends at once
        (:class:`NotOffered`): its clause does not apply in that dtype.
        """
        if not may_refuse:
            return self._build(case, set_parameters, set_state, copy_inputs)
        try:
            layer = self._build(case, set_parameters, set_state, copy_inputs)
        except ImplementationLost:
            raise
        except ImplementationError as problem:
            if isinstance(problem.__cause__, UnsupportedConfig):
                self.refused += 1
                if offered and not self.built and self.refused >= UNSUPPORTED_IN_A_ROW:
                    raise NotOffered(
                        f"the implementation does not offer {offered} ({problem.reason})"
                    ) from None
                reject()
            raise
        return layer

    def _build(
        self, case: Case[Any], set_parameters: bool, set_state: bool, copy_inputs: bool
    ) -> Layer:
        params = case.params if set_parameters else None
        state = case.state if set_state else None
        if isinstance(self.implementation, IsolatedImplementation):
            if copy_inputs and params is not None:
                params = (layout_copy(params[0]), layout_copy(params[1]))
            built = self.implementation.build_set
            remote, failure = self.call("build", built, case.config, params, state)
            self.built += 1
            if failure is not None:
                operation, problem = failure
                self.call(operation, _raise, problem)
            return remote
        layer: Layer = self.call("build", self.implementation.build, case.config)
        self.built += 1
        if params is not None:
            self.call("set_parameters", layer.set_parameters, *params, copy_inputs=copy_inputs)
        if state is not None:
            self.call("set_state", layer.set_state, state)
        return layer

    def expect(self, comparison: Comparison) -> None:
        """Raise :class:`NonFinite` or :class:`OutOfBound` unless the comparison is within
        its bound; a comparison that passes counts towards :attr:`worst`."""
        __tracebackhide__ = True  # a pytest traceback starts at the check
        if comparison.ok:
            self.passed(comparison)
        elif comparison.nonfinite:
            raise observe(NonFinite(comparison.describe(), comparison), self)
        else:
            raise observe(OutOfBound(comparison.describe(), comparison), self)

    def expect_one_of(self, alternatives: Sequence[Sequence[Comparison]]) -> None:
        """:meth:`expect` where several readings are accepted (either variance estimator):
        pass where every comparison of one alternative is within its bound, those counting
        towards :attr:`worst`; else raise the first failure of the first alternative."""
        __tracebackhide__ = True  # a pytest traceback starts at the check
        for comparisons in alternatives:
            if all(comparison.ok for comparison in comparisons):
                for comparison in comparisons:
                    self.passed(comparison)
                return
        self.expect(next(c for c in alternatives[0] if not c.ok))

    def passed(self, comparison: Comparison) -> None:
        """Count a passing comparison's significant error towards :attr:`worst`."""
        figure = comparison.significant
        if not comparison.ok or figure is None or math.isnan(figure.value):
            return
        if self.worst is None or figure.value > self.worst.value:
            self.worst = figure

    def require(self, condition: bool, message: str | Callable[[], str]) -> None:
        """Raise :class:`RequirementNotMet` with ``message`` unless ``condition`` holds; a
        message that formats arrays or states is passed as a function, called only then."""
        __tracebackhide__ = True  # a pytest traceback starts at the check
        if not condition:
            text = message if isinstance(message, str) else message()
            raise observe(RequirementNotMet(text), self)

    def state_of(self, layer: Layer) -> RunningStatistics | None:
        state: RunningStatistics | None = self.call("state", layer.state)
        return state

    def shape_of(self, name: str, value: Any, shape: tuple[int, ...]) -> Array:
        """``value`` as a float64 array of the given shape, else a Violation."""
        array = np.asarray(value, dtype=np.float64)
        if array.shape != tuple(shape):
            message = f"{name} has shape {array.shape}, expected {tuple(shape)}"
            raise observe(Violation(message), self)
        return array


def _raise(problem: Exception) -> None:
    """Raise what an operation raised in a worker, as if it raised it now."""
    raise problem


def reference_config(case: Case[Any], dialect: Dialect) -> BatchNormConfig:
    """The reference layer config equivalent to the case under the dialect."""
    return BatchNormConfig(
        num_features=case.config.num_features,
        feature_axis=case.config.feature_axis,
        eps=case.config.eps,
        rate=case.rate,
        running_variance=dialect.running_variance,
        affine=case.config.affine,
        track_running_stats=case.config.track_running_stats,
        running_average=dialect.running_average,
    )


def reference_params(case: Case[Any]) -> Affine | None:
    return None if case.params is None else Affine(*case.params)


__all__ = [
    "CheckContext",
    "ImplementationError",
    "NonFinite",
    "NotOffered",
    "OutOfBound",
    "RequirementNotMet",
    "Violation",
    "let_go",
    "observe",
    "observed",
    "reference_config",
    "reference_params",
]
