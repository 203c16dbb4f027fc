"""Running the checks against one implementation: selection, ordering, outcomes."""

from __future__ import annotations

import datetime
import fnmatch
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException
from hypothesis.stateful import run_state_machine_as_test

import normspec
from normspec import spec
from normspec.adapters.protocol import ALL_DTYPES, Capabilities, DTypeName, Implementation
from normspec.adapters.registry import target_environment
from normspec.conformance.checks import Check, load_builtin_checks
from normspec.conformance.context import CheckContext, let_go, observe
from normspec.conformance.discards import Discards
from normspec.conformance.findings import (
    DtypePart,
    DtypeRun,
    dtype_run,
    finding,
    members,
    refusals_judged,
)
from normspec.conformance.guard import Guard
from normspec.conformance.isolation import IsolatedImplementation, command_flags, isolation_of
from normspec.conformance.lanes import ProcessLane, close_lanes, start_lanes
from normspec.conformance.menu import DEFAULT_MENU_SIZE, Menu
from normspec.conformance.repeats import Repeats
from normspec.conformance.results import (
    SEVERITY,
    ClauseResult,
    Finding,
    Report,
    plain_versions,
    worst_outcome,
)
from normspec.conformance.run_settings import DEFAULT_TIMEOUT, OptionsError, RunSettings
from normspec.conformance.schedule import checked_in_order
from normspec.conformance.seeded_draws import seeded_draws
from normspec.conformance.shrinking import DEFAULT_SHRINK_SECONDS, shrink_limit
from normspec.reference.dialects import Dialect
from normspec.reference.dialects import profile as find_profile

#: Examples per clause under the default settings (the one-minute budget).
DEFAULT_MAX_EXAMPLES = 40
#: Steps per run of a state machine.
STATEFUL_STEPS = 8
#: How far apart the Hypothesis seeds of one check's per-dtype runs lie (see :func:`dtype_seed`).
DTYPE_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class CheckOptions(RunSettings):
    """How to check one implementation: the run's settings (validated when built), the
    profile claimed (a built-in name or a profile file) and the target, for the reproduce
    commands."""

    profile: str = "paper"
    target: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            find_profile(self.profile)
        except KeyError as problem:
            raise OptionsError(str(problem.args[0])) from None


def select_checks(pattern: str | None) -> list[Check]:
    """The checks whose clause IDs match any comma-separated glob pattern, in run order."""
    registry = load_builtin_checks()
    ids = [c.id for c in spec.clauses() if c.id in registry]
    if pattern:
        patterns = [p.strip() for p in pattern.split(",") if p.strip()]
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(i, p) for i in ids)]
        if unmatched:
            raise OptionsError(f"clause pattern {unmatched[0]!r} matches no checked clause")
        ids = [i for i in ids if any(fnmatch.fnmatchcase(i, p) for p in patterns)]
    return order_by_dependencies([registry[i] for i in ids])


def order_by_dependencies(checks: list[Check]) -> list[Check]:
    """Spec order, except that a clause comes after the clauses it depends on."""
    by_id = {c.clause_id: c for c in checks}
    ordered: list[Check] = []
    placed: set[str] = set()

    def place(item: Check) -> None:
        if item.clause_id in placed:
            return
        placed.add(item.clause_id)
        for dependency in item.depends_on:
            if dependency in by_id:
                place(by_id[dependency])
        ordered.append(item)

    for item in checks:
        place(item)
    return ordered


def _dtypes(
    requested: Sequence[str] | None, supported: frozenset[DTypeName]
) -> tuple[DTypeName, ...]:
    wanted = requested or ALL_DTYPES
    return tuple(d for d in ALL_DTYPES if d in wanted and d in supported)


def menu_size(options: CheckOptions, capabilities: Capabilities) -> int:
    """Entries per dtype of the run's menu (0: none), as asked or by the capabilities.

    By default an implementation that compiles per shape gets DEFAULT_MENU_SIZE entries per
    DEFAULT_MAX_EXAMPLES examples per clause (a longer run covers more settings for the
    same share of compilation), at least DEFAULT_MENU_SIZE.
    """
    if options.menu is not None:
        return options.menu
    if not capabilities.compiles_per_shape:
        return 0
    budget = options.max_examples or DEFAULT_MAX_EXAMPLES
    return DEFAULT_MENU_SIZE * max(1, budget // DEFAULT_MAX_EXAMPLES)


def menus(
    options: CheckOptions,
    capabilities: Capabilities,
    dialect: Dialect,
    dtypes: Sequence[DTypeName],
) -> dict[str, Menu]:
    """Each dtype's menu (seeded like its Hypothesis runs), or none."""
    size = menu_size(options, capabilities)
    if not size:
        return {}
    return {
        d: Menu.generate(capabilities, dialect, dtype_seed(options.seed, d), size) for d in dtypes
    }


def environment_prefix(versions: Mapping[str, str], target: str | None) -> str:
    """What a reproduce command sets before ``normspec check`` for the run to recur: the
    Keras backend a user's Keras 3 class ran on (``KERAS_BACKEND=jax``, inherited by its
    worker; built-in targets declare theirs, and TensorFlow is Keras' default)."""
    backend = versions.get("keras_backend")
    if backend in (None, "tensorflow") or "KERAS_BACKEND" in target_environment(target or ""):
        return ""
    return f"KERAS_BACKEND={backend} "


def reproduce_command(
    options: CheckOptions, clause_id: str, dtypes: Sequence[str], flags: str = "", prefix: str = ""
) -> str:
    """The ``normspec check`` command that runs one clause as this run did; ``flags`` say
    where the implementation ran (``--in-process``, ``--memory-limit``), ``prefix`` the
    environment it needs (:func:`environment_prefix`)."""
    target = options.target or "TARGET"
    return (
        f"{prefix}normspec check {target} --profile {shlex.quote(options.profile)} --clauses {clause_id} "
        f"--dtype {','.join(dtypes)} --seed {options.seed}"
        + (f" --max-examples {options.max_examples}" if options.max_examples else "")
        + (
            f" --shrink-seconds {options.shrink_seconds:g}"
            if options.shrink_seconds != DEFAULT_SHRINK_SECONDS
            else ""
        )
        + (f" --menu {options.menu}" if options.menu is not None else "")
        + (f" --timeout {options.timeout:g}" if options.timeout != DEFAULT_TIMEOUT else "")
        + flags
    )


def dtype_seed(seed_value: int, dtype: DTypeName) -> int:
    """The Hypothesis seed of a check's run in one dtype.

    Each dtype has its own (float64 the run's seed itself), so the per-dtype runs of a check
    draw different shapes, rates and states instead of the same ones in each dtype; a run
    of that dtype alone (the reproduce command's ``--dtype``) uses the same seed.
    """
    return seed_value + DTYPE_SEED_STRIDE * ALL_DTYPES.index(dtype)


def _hypothesis_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        database=None,
        deadline=None,
        derandomize=False,
        report_multiple_bugs=True,
        print_blob=False,
        stateful_step_count=STATEFUL_STEPS,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
    )


def _run_check(item: Check, ctx: CheckContext, max_examples: int, seed_value: int) -> None:
    configured = _hypothesis_settings(max_examples)
    if item.stateful:
        machine = item.body(ctx, None)
        run_state_machine_as_test(seed(seed_value)(machine), settings=configured)
        return

    def body(ctx: CheckContext, data: Any) -> None:
        try:
            item.body(ctx, data)
        except HypothesisException as flow:
            let_go(flow, data.drawn)
            raise  # its own flow (an assumption not met, a draw refused): no failure
        except Exception as problem:
            observe(problem, ctx)  # the example it was raised on, where no ctx method kept it
            let_go(problem, data.drawn)
            raise

    repeats = ctx.repeats = Repeats()
    discards = Discards()

    @seed(seed_value)
    @configured
    @given(st.data())
    def property_test(data: Any) -> None:
        discards.run(lambda: repeats.run(ctx, data, body))

    try:
        property_test()
    finally:
        ctx.repeats = None


def _caused_by_interrupt(problem: BaseException) -> bool:
    """Whether a Ctrl-C is behind ``problem``: raised while handling one, or grouped with
    one (Hypothesis wraps what its final replay of a failure raises)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [problem]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, KeyboardInterrupt):
            return True
        grouped = getattr(current, "exceptions", ())  # an exception group's members
        pending += [e for e in grouped if isinstance(e, BaseException)]
        pending += [current.__cause__, current.__context__]
    return False


NOT_CHECKED_AFTER_HANG = (
    "not checked: a call of an earlier clause hung, and in-process its thread cannot "
    "be stopped (in a worker process, without --in-process, the run goes on)"
)


def settled_result(
    item: Check, capabilities: Capabilities, dialect: Dialect, dtypes: tuple[DTypeName, ...]
) -> ClauseResult | None:
    """The result of a clause checked in none of ``dtypes`` (not applicable to the
    implementation, or no dtype to check it in); ``None`` where it has dtypes to run."""
    clause = spec.clause(item.clause_id)
    result = ClauseResult(item.clause_id, clause.level, clause.summary, "not_applicable")
    reason = item.not_applicable(capabilities, dialect, dtypes)
    if reason is not None:
        result.message = reason
        return result
    if not dtypes:
        note = capabilities.notes.get("dtypes")
        result.message = "no requested dtype is supported" + (f" ({note})" if note else "")
        return result
    return None


def check_dtypes(
    item: Check,
    ctx: CheckContext,
    options: CheckOptions,
    dtypes: Sequence[DTypeName],
    blocked_by: Mapping[str, str],
    flags: str = "",
    prefix: str = "",
) -> dict[str, DtypePart]:
    """Run the check of a clause that has dtypes to run (:func:`settled_result`) in each of
    ``dtypes`` (some of ``ctx.dtypes``, in their order), each run on its own: its share of
    the examples, its own seed, shrink and verdict, never depending on the other dtypes'
    runs; never raises for anything the implementation does. ``blocked_by`` maps a dtype to
    a clause this one depends on that did not pass in it (the clause is skipped there);
    ``flags`` and ``prefix``: of the reproduce command (:func:`reproduce_command`)."""
    not_applicable_in = item.dtype_reasons(ctx.capabilities, ctx.dialect, ctx.dtypes)
    all_dtypes = ctx.dtypes
    budget = options.max_examples or DEFAULT_MAX_EXAMPLES
    shares = len(all_dtypes) - len(not_applicable_in)  # the dtypes the examples go to
    parts: dict[str, DtypePart] = {}
    try:
        for dtype in dtypes:
            ctx.begin_check()
            started = time.perf_counter()
            if dtype in not_applicable_in:
                run = DtypeRun("not_applicable", not_applicable_in[dtype])
            elif dtype in blocked_by:
                message = f"depends on {blocked_by[dtype]}, which did not pass in {dtype}"
                run = DtypeRun("skipped", message)
            elif ctx.guard.hung is not None:
                run = DtypeRun("error", NOT_CHECKED_AFTER_HANG)
            else:
                ctx.dtypes = (dtype,)
                ctx.begin_dtype()
                run = _run_dtype(item, ctx, options, dtype, flags, prefix, shares, budget)
            seconds = time.perf_counter() - started
            parts[dtype] = DtypePart(run, ctx.examples, ctx.worst, seconds)
    finally:
        ctx.dtypes = all_dtypes
    return parts


def merged_result(
    item: Check, parts: Mapping[str, DtypePart], blocked_by: Mapping[str, str]
) -> ClauseResult:
    """A clause's result from its runs in every dtype (``parts``, in the run's dtype order):
    its outcome the worst of theirs, its findings theirs (worst first), its examples and
    seconds their sums, its largest error the largest of theirs (the first of equals)."""
    clause = spec.clause(item.clause_id)
    result = ClauseResult(item.clause_id, clause.level, clause.summary, "pass")
    runs = refusals_judged({dtype: part.run for dtype, part in parts.items()})
    result.seconds = sum(part.seconds for part in parts.values())
    result.examples = sum(part.examples for part in parts.values())
    for part in parts.values():
        if part.worst is not None and (
            result.worst is None or part.worst.value > result.worst.value
        ):
            result.worst = part.worst
    result.dtype_outcomes = {dtype: run.outcome for dtype, run in runs.items()}
    found = [f for run in runs.values() for f in run.findings]
    result.findings = sorted(found, key=lambda f: -SEVERITY[f.outcome])  # worst first, stable
    result.outcome = worst_outcome(result.dtype_outcomes.values())
    result.message = _summary_message(result, runs, blocked_by)
    return result


def _run_dtype(
    item: Check,
    ctx: CheckContext,
    options: CheckOptions,
    dtype: DTypeName,
    flags: str,
    prefix: str,
    dtypes: int,
    budget: int,
) -> DtypeRun:
    """One dtype's run of a check: its share of the examples, its findings each shrunk."""
    problem: Exception | None = None
    with shrink_limit(options.shrink_seconds) as watch, seeded_draws():
        try:
            _run_check(item, ctx, max(1, -(-budget // dtypes)), dtype_seed(options.seed, dtype))
        except Exception as raised:
            if _caused_by_interrupt(raised):
                raise KeyboardInterrupt from raised  # a Ctrl-C is never an outcome
            problem = raised
            for member in members(raised):
                observe(member, ctx)  # where nothing kept its example: the last one drawn
    shrinking = (
        f"stopped after {options.shrink_seconds:g} s: the example may not be minimal "
        "(--shrink-seconds allows longer)"
        if watch.stopped_early
        else ""
    )
    reproduce = reproduce_command(options, item.clause_id, (dtype,), flags, prefix)

    def make(member: BaseException) -> Finding:
        return finding(member, dtype, reproduce, options.seed, shrinking)

    return dtype_run(problem, make)


def _summary_message(
    result: ClauseResult, runs: Mapping[str, DtypeRun], blocked_by: Mapping[str, str]
) -> str:
    """The clause's message: its first finding's (the worst), else why its worst dtype was
    not checked; a skip in every dtype behind one clause says so in one line; a clause that
    passed where it applied says in which dtypes it did not apply, and why."""
    if result.findings:
        return result.findings[0].message
    behind = set(blocked_by.values())
    if len(behind) == 1 and set(blocked_by) == set(runs):
        return f"depends on {behind.pop()}, which did not pass"
    worst = max(runs.values(), key=lambda run: SEVERITY[run.outcome], default=None)
    if worst is None or worst.outcome != "pass":
        return "" if worst is None else worst.message
    reasons: dict[str, list[str]] = {}
    for dtype, run in runs.items():
        if run.outcome == "not_applicable":
            reasons.setdefault(run.message, []).append(dtype)
    return "; ".join(
        f"not applicable in {', '.join(dtypes)}: {reason}" for reason, dtypes in reasons.items()
    )


def environment() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "executable": sys.executable,
    }


class CheckSession:
    """One implementation under one run's options: what the checks of all its clauses share
    (the profile's dialect, the capabilities, the dtypes, the menus, the guard of its calls),
    and a clause's check (:class:`~normspec.conformance.schedule.Checker`)."""

    def __init__(self, implementation: Implementation, options: CheckOptions) -> None:
        self.implementation = implementation
        self.options = options
        self.dialect = find_profile(options.profile)
        self.capabilities = implementation.capabilities()
        self.dtypes = _dtypes(options.dtypes, self.capabilities.dtypes)
        self.menus = menus(options, self.capabilities, self.dialect, self.dtypes)
        self.versions = plain_versions(implementation.versions())
        worker = (
            implementation.worker if isinstance(implementation, IsolatedImplementation) else None
        )
        self.guard = Guard(options.timeout, worker)
        self.flags = command_flags(implementation)
        self.prefix = environment_prefix(self.versions, options.target)

    def settled(self, item: Check) -> ClauseResult | None:
        return settled_result(item, self.capabilities, self.dialect, self.dtypes)

    def check(
        self, item: Check, dtypes: Sequence[DTypeName], blocked: Mapping[str, str]
    ) -> dict[str, DtypePart]:
        ctx = CheckContext(
            self.implementation,
            self.capabilities,
            self.dialect,
            self.dtypes,
            self.guard,
            menus=self.menus,
        )
        ctx.bounds = item.bounds
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            return check_dtypes(item, ctx, self.options, dtypes, blocked, self.flags, self.prefix)

    def merged(
        self, item: Check, parts: Mapping[str, DtypePart], blocked: Mapping[str, str]
    ) -> ClauseResult:
        return merged_result(item, parts, blocked)

    def close(self) -> None:
        self.guard.close()


def check_implementation(
    implementation: Implementation,
    options: CheckOptions,
    progress: Callable[[ClauseResult], None] | None = None,
    on_start: Callable[[Report], None] | None = None,
    lanes: Sequence[ProcessLane] | None = None,
) -> Report:
    """Check every selected clause against ``implementation`` under ``options.profile``.

    An :class:`~normspec.conformance.isolation.IsolatedImplementation` is called in its
    worker process (a crash or a hang ends the worker and the run goes on); any other
    implementation in this process. The report says which (``Report.isolation``). With
    ``options.jobs`` above 1, an isolated implementation and its target, the clauses are
    spread over that many processes (:mod:`~normspec.conformance.lanes`); the report is the
    same (``lanes``: those already launched for it, :func:`~normspec.conformance.lanes.
    launch_lanes`; they are closed here). ``progress`` is called with each clause's
    result, in run order.
    """
    checks = select_checks(options.clauses)
    session = CheckSession(implementation, options)
    report = Report(
        implementation=implementation.name,
        target=options.target or implementation.name,
        profile=session.dialect.name,
        profile_source=session.dialect.source,
        dtypes=session.dtypes,
        seed=options.seed,
        max_examples=options.max_examples or DEFAULT_MAX_EXAMPLES,
        menu=menu_size(options, session.capabilities),
        isolation=isolation_of(implementation),
        versions=session.versions,
        environment=environment(),
        normspec_version=normspec.__version__,
        spec_version=spec.SPEC_VERSION,
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        warnings=list(session.capabilities.warnings),
    )
    started = time.perf_counter()
    if lanes is None:
        lanes = start_lanes(implementation, options, len(checks))
    report.processes = 1 + len(lanes)
    try:
        if on_start is not None:
            on_start(report)
        for result in checked_in_order(checks, session, lanes, session.dtypes):
            report.results.append(result)
            if progress is not None:
                progress(result)
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        session.close()
        report.warnings += close_lanes(lanes)
    report.seconds = time.perf_counter() - started
    return report
