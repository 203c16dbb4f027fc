"""The pytest plugin: normspec's clauses as test items inside a library's own test run.

Installed with normspec (entry point ``pytest11``: ``normspec``); it does nothing unless
``--normspec-target`` is given::

    pytest --normspec-target=mylib.bn:impl --normspec-profile=torch \\
           [--normspec-deviations=normspec-deviations.toml] [--normspec-hypothesis-profile=ci]

adds one test item per checked clause, ``normspec[bn.train.output]`` and so on, to the
collected tests. Each item checks its clause on its own (no item depends on another, so
they distribute over pytest-xdist workers). A clause outside the implementation's
capabilities is skipped; a declared deviation is an expected failure (xfail); a failed
SHOULD clause is an xfail too unless ``--normspec-strict``; a failed or erroring MUST
clause fails with the minimal example and the command that reproduces it. A clause that
passed where it applied and was not applicable in some dtype says in which, and why, on its
line (``-v``), in the ``normspec`` summary and as its JUnit property
``normspec_not_applicable``.

Hypothesis settings profiles of the checks (``--normspec-hypothesis-profile``):

- ``ci`` (the default): derandomized, deterministic: seed 0 (or ``--normspec-seed``), the
  same examples on every run, every machine and every worker; 40 examples per clause;
- ``dev``: a fresh seed per session (printed in the header and in every reproduce command,
  shared by all workers), 20 examples per clause;
- ``thorough``: a fresh seed, 400 examples per clause, for a run before a release.
"""

from __future__ import annotations

import os
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from normspec.conformance.deviations import (
    CATEGORY_TITLES,
    DeviationApplier,
    DeviationFileError,
    DeviationSet,
    load_deviations,
)
from normspec.conformance.report_terminal import partly_applicable
from normspec.conformance.results import PROBLEMS, ClauseResult
from normspec.conformance.shrinking import DEFAULT_SHRINK_SECONDS

RESULT_PROPERTY = "normspec_result"
META_PROPERTY = "normspec_meta"
#: A passing clause's dtypes that were not applicable, and why (its report line and JUnit).
NOT_APPLICABLE_PROPERTY = "normspec_not_applicable"
SEED_INPUT = "normspec_seed"


@dataclass(frozen=True)
class CheckProfile:
    """Hypothesis settings of the checks: examples per clause and where the seed comes from."""

    name: str
    max_examples: int
    derandomize: bool
    description: str


CHECK_PROFILES: dict[str, CheckProfile] = {
    p.name: p
    for p in (
        CheckProfile("ci", 40, True, "derandomized: a fixed seed, the same examples every run"),
        CheckProfile("dev", 20, False, "a fresh seed per session, fewer examples"),
        CheckProfile("thorough", 400, False, "a fresh seed, many examples"),
    )
}


class NormspecWarning(UserWarning):
    """A deviation-file entry that matches nothing, or a declared deviation that now passes."""


class ClauseFailure(Exception):
    """A clause that failed or errored (carries the result for the failure report)."""

    def __init__(self, result: ClauseResult) -> None:
        super().__init__(result.message)
        self.result = result


#: The name of the ``pytest11`` entry point (``-p normspec`` loads it explicitly).
ENTRY_POINT = "normspec"


def pytest_plugin_registered(plugin: Any, plugin_name: str, manager: Any) -> None:
    """Loaded by module name (``-p normspec.conformance.pytest_plugin``) with plugin
    autoloading on: block the entry point, which names this same module and would
    otherwise be registered a second time (an error)."""
    if (
        plugin is sys.modules[__name__]
        and plugin_name != ENTRY_POINT
        and manager.get_plugin(ENTRY_POINT) is None
    ):
        manager.set_blocked(ENTRY_POINT)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("normspec", "normspec conformance checks")
    group.addoption(
        "--normspec-target",
        metavar="TARGET",
        help="check this implementation (package.module:attr, or a built-in alias) clause "
        "by clause: one test item per clause, normspec[CLAUSE]",
    )
    group.addoption(
        "--normspec-profile",
        default="paper",
        metavar="NAME",
        help="the profile it claims: a built-in name, or a profile file (.toml or .json)",
    )
    group.addoption(
        "--normspec-deviations",
        action="append",
        metavar="FILE",
        help="deviation file: listed clauses are expected failures (repeatable)",
    )
    group.addoption(
        "--normspec-hypothesis-profile",
        default="ci",
        choices=sorted(CHECK_PROFILES),
        help="Hypothesis settings of the checks: ci (deterministic, default), dev, thorough",
    )
    group.addoption("--normspec-clauses", metavar="PATTERNS", help="clause ID patterns")
    group.addoption("--normspec-dtype", metavar="DTYPES", help="comma-separated dtypes")
    group.addoption("--normspec-max-examples", type=int, help="examples per clause")
    group.addoption("--normspec-seed", type=int, help="Hypothesis seed")
    group.addoption("--normspec-timeout", type=float, default=60.0, help="per-call limit, s")
    group.addoption(
        "--normspec-shrink-seconds",
        type=float,
        default=DEFAULT_SHRINK_SECONDS,
        help="time limit on shrinking one failure, s",
    )
    group.addoption(
        "--normspec-menu",
        type=int,
        metavar="N",
        help="settings drawn from a per-run menu of N entries per dtype; 0: freely (default: "
        "a menu for implementations that compile per shape)",
    )
    group.addoption(
        "--normspec-in-process",
        action="store_true",
        help="call the implementation in the test process instead of a worker process",
    )
    group.addoption("--normspec-json", metavar="PATH", help="write a normspec JSON report")
    group.addoption(
        "--normspec-strict", action="store_true", help="a failed SHOULD clause fails too"
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("normspec_target", None):
        config.pluginmanager.register(NormspecPlugin(config), "normspec-session")


class NormspecPlugin:
    """Everything the plugin does when ``--normspec-target`` is given."""

    def __init__(self, config: pytest.Config) -> None:
        from normspec.conformance.run_settings import OptionsError, RunSettings
        from normspec.conformance.runner import select_checks
        from normspec.reference.dialects import profile

        self.config = config
        config.addinivalue_line("markers", "normspec: a clause of the normspec specification")
        self.target: str = config.getoption("normspec_target")
        self.profile: str = config.getoption("normspec_profile")
        self.check_profile = CHECK_PROFILES[config.getoption("normspec_hypothesis_profile")]
        dtype = config.getoption("normspec_dtype")
        self.max_examples: int = (
            config.getoption("normspec_max_examples") or self.check_profile.max_examples
        )
        self.strict: bool = config.getoption("normspec_strict")
        self.json_path: str | None = config.getoption("normspec_json")
        self.in_process: bool = config.getoption("normspec_in_process")
        try:
            self.dialect = profile(self.profile)
        except KeyError as problem:
            raise pytest.UsageError(f"--normspec-profile: {problem.args[0]}") from None
        try:
            self.settings = RunSettings(
                dtypes=[d.strip() for d in dtype.split(",")] if dtype else None,
                clauses=config.getoption("normspec_clauses"),
                max_examples=self.max_examples,
                timeout=config.getoption("normspec_timeout"),
                shrink_seconds=config.getoption("normspec_shrink_seconds"),
                menu=config.getoption("normspec_menu"),
            )
            self.checks = select_checks(self.settings.clauses)
            self.deviations: DeviationSet = load_deviations(
                config.getoption("normspec_deviations")
            ).for_run(self.target, self.dialect.name)
        except OptionsError as problem:
            option = f"--normspec-{(problem.setting or '').replace('_', '-')}"
            raise pytest.UsageError(f"normspec: {problem.spelled(option)}") from None
        except DeviationFileError as problem:
            raise pytest.UsageError(f"normspec: {problem}") from None
        self.seed = self._seed()
        self._implementation: Any = None
        self._results: dict[str, dict[str, Any]] = {}
        self._meta: dict[str, Any] = {}

    # -- the seed, shared with xdist workers ----------------------------------------------------

    def _seed(self) -> int:
        workerinput = getattr(self.config, "workerinput", None)
        if workerinput is not None and SEED_INPUT in workerinput:
            return int(workerinput[SEED_INPUT])
        chosen = self.config.getoption("normspec_seed")
        if chosen is not None:
            return int(chosen)
        return 0 if self.check_profile.derandomize else random.randrange(2**31)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """pytest-xdist: every worker checks with the controller's seed."""
        node.workerinput[SEED_INPUT] = self.seed

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    # -- collection -----------------------------------------------------------------------------

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        deviations = ", ".join(self.deviations.sources) or "none"
        return [
            f"normspec: target {self.target}, profile {self.dialect.label}, hypothesis profile "
            f"{self.check_profile.name} ({self.max_examples} examples per clause, seed "
            f"{self.seed}), deviations {deviations}"
        ]

    def implementation(self) -> Any:
        if self._implementation is None:
            from normspec.adapters.registry import TargetError
            from normspec.conformance.isolation import Isolation, load_implementation

            rootdir = str(self.config.rootpath)
            for path in (os.getcwd(), rootdir):
                if path not in sys.path:
                    sys.path.insert(0, path)
            try:
                self._implementation = load_implementation(
                    self.target,
                    self.profile,
                    None if self.in_process else Isolation(),
                    timeout=self.settings.timeout,
                )
            except TargetError as problem:
                raise pytest.UsageError(f"--normspec-target: {problem}") from None
        return self._implementation

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        implementation = self.implementation()  # a target that does not load: usage error
        from normspec import spec
        from normspec.adapters.protocol import ALL_DTYPES

        capabilities = implementation.capabilities()
        dialect = self.dialect
        wanted = self.settings.dtypes or ALL_DTYPES
        dtypes = tuple(d for d in ALL_DTYPES if d in wanted and d in capabilities.dtypes)
        meta = {
            "implementation": implementation.name,
            "versions": implementation.versions(),
            "dtypes": list(dtypes),
        }
        for check in self.checks:
            clause = spec.clause(check.clause_id)
            item = NormspecItem.from_parent(
                session,
                name=f"normspec[{clause.id}]",
                nodeid=f"normspec[{clause.id}]",
                clause_id=clause.id,
                level=clause.level,
                plugin=self,
            )
            reason = check.not_applicable(capabilities, dialect, dtypes)
            if reason is None and not dtypes:
                reason = "no requested dtype is supported"
            if reason is not None:
                # outside the implementation's capabilities: skipped without running, and
                # still reported (as the runner does) in the JSON report
                item.add_marker(pytest.mark.skip(reason=f"not applicable: {reason}"))
                result = ClauseResult(clause.id, clause.level, clause.summary, "not_applicable")
                result.message = reason
                attach(item, RESULT_PROPERTY, result.to_json())
                attach(item, META_PROPERTY, meta)
            items.append(item)

    # -- running one clause ---------------------------------------------------------------------

    def run_clause(self, clause_id: str) -> ClauseResult:
        from normspec.conformance.run_settings import shared_settings
        from normspec.conformance.runner import CheckOptions, check_implementation

        implementation = self.implementation()
        shared = shared_settings(self.settings) | {"clauses": clause_id, "seed": self.seed}
        options = CheckOptions(**shared, profile=self.profile, target=self.target)
        report = check_implementation(implementation, options)
        if report.interrupted:
            raise KeyboardInterrupt
        self._meta = {
            "implementation": report.implementation,
            "versions": report.versions,
            "dtypes": list(report.dtypes),
            "environment": report.environment,
            "menu": report.menu,
            "isolation": report.isolation,
        }
        result = next(r for r in report.results if r.clause_id == clause_id)
        DeviationApplier(self.deviations)(result)
        return result

    # -- the JSON report and the summary (controller, or the only process) ------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect each clause's result (from this process or an xdist worker), and take it
        out of the user properties so that --junitxml keeps only ``normspec_clause``."""
        if self.is_worker:
            return  # the controller reads them: xdist sends it the user properties
        kept = []
        for name, value in report.user_properties:
            if name == RESULT_PROPERTY and isinstance(value, dict):
                if report.when == "call" or (report.when == "setup" and report.skipped):
                    self._results[value["clause"]] = value
            elif name == META_PROPERTY and isinstance(value, dict):
                self._meta = value
            else:
                kept.append((name, value))
        report.user_properties = kept

    def pytest_report_teststatus(self, report: pytest.TestReport) -> Any:
        """A clause that passed where it applied says on its line in which dtypes it did
        not apply, and why (as ``normspec check``'s progress line)."""
        if report.when != "call" or not report.passed:
            return None
        note = dict(report.user_properties).get(NOT_APPLICABLE_PROPERTY)
        if not isinstance(note, str):
            return None
        return "passed", ".", (f"PASSED ({note})", {"green": True})

    def _report(self) -> Any:
        import datetime

        import normspec
        from normspec import spec
        from normspec.conformance.results import Report
        from normspec.conformance.runner import environment

        report = Report(
            implementation=str(self._meta.get("implementation", self.target)),
            target=self.target,
            profile=self.dialect.name,
            profile_source=self.dialect.source,
            dtypes=tuple(self._meta.get("dtypes", ())),
            seed=self.seed,
            max_examples=self.max_examples,
            menu=int(self._meta.get("menu", 0)),
            isolation=str(self._meta.get("isolation", "in-process")),
            versions=dict(self._meta.get("versions", {})),
            environment=dict(self._meta.get("environment", environment())),
            normspec_version=normspec.__version__,
            spec_version=spec.SPEC_VERSION,
            started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        for check in self.checks:
            raw = self._results.get(check.clause_id)
            if raw is not None:
                report.results.append(result_from_json(raw))
        report.seconds = sum(r.seconds for r in report.results)
        DeviationApplier(self.deviations).finish(report)
        return report

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker or not self._results:
            return
        report = self._report()
        if report.verdict == "nothing applicable" and session.exitstatus == pytest.ExitCode.OK:
            # as pytest's own "no tests ran": a CI gate must not read it as a pass
            session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
        if self.json_path:
            from normspec.conformance.report_json import write_json

            write_json(report, self.json_path)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        write = terminalreporter.write_line
        terminalreporter.section("normspec", sep="-")
        if not self._results:
            write(f"normspec: no clause of {self.target} was run")
        else:
            report = self._report()
            counts = ", ".join(
                f"{v} {k.replace('_', ' ')}" for k, v in report.counts().items() if v
            )
            write(
                f"{report.verdict.upper()}: {self.target} under profile "
                f"{self.dialect.label}: {counts}"
            )
            if report.verdict == "nothing applicable":
                write(
                    "normspec: nothing was checked: no selected clause applies to "
                    f"{self.target}, so this is no pass (exit status 5, as for no tests run)"
                )
            for result in report.results:
                if partly_applicable(result):
                    write(f"{result.clause_id} passed; {result.message}")
            for warning in report.warnings:
                write(f"warning: {warning}")
        if self.json_path and self._results:
            write(f"JSON report: {self.json_path}")


def attach(item: pytest.Item, name: str, value: Any) -> None:
    """Attach ``value`` to ``item``'s user properties as plain JSON data: pytest-xdist sends
    them from a worker to the controller, and its serializer takes built-in types only."""
    from normspec.conformance.report_json import json_safe

    item.user_properties.append((name, json_safe(value)))


def result_from_json(raw: dict[str, Any]) -> ClauseResult:
    """A :class:`ClauseResult` from its JSON form (``ClauseResult.to_json``)."""
    return ClauseResult.from_json(raw)


class NormspecItem(pytest.Item):
    """One clause of the specification, checked against the target."""

    def __init__(
        self, *, clause_id: str, level: str, plugin: NormspecPlugin, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.clause_id = clause_id
        self.level = level
        self.plugin = plugin
        self.add_marker(pytest.mark.normspec)
        self.user_properties.append(("normspec_clause", clause_id))

    def runtest(self) -> None:
        result = self.plugin.run_clause(self.clause_id)
        attach(self, RESULT_PROPERTY, result.to_json())
        attach(self, META_PROPERTY, self.plugin._meta)
        outcome = result.outcome
        if partly_applicable(result):
            self.user_properties.append((NOT_APPLICABLE_PROPERTY, result.message))
        if outcome == "pass":
            entry = self.plugin.deviations.find(self.clause_id)
            if entry is not None:
                warnings.warn(
                    NormspecWarning(
                        f"{self.clause_id} is declared a deviation "
                        f"({CATEGORY_TITLES[entry.category]}) in {entry.source} but now "
                        "passes: remove the entry"
                    ),
                    stacklevel=1,
                )
            return
        if outcome == "not_applicable":
            pytest.skip(f"not applicable: {result.message}")
        if outcome == "declared" and result.deviation is not None:
            pytest.xfail(
                f"declared deviation ({CATEGORY_TITLES.get(result.deviation['category'], '')}): "
                f"{result.deviation['reason']}"
            )
        if outcome in PROBLEMS and result.level != "MUST" and not self.plugin.strict:
            pytest.xfail(
                f"{result.level} clause not met (--normspec-strict fails it): {result.message}"
            )
        if outcome == "skipped":
            pytest.skip(result.message)
        raise ClauseFailure(result)

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, ClauseFailure):
            return describe_failure(excinfo.value.result)
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, self.name


def describe_failure(result: ClauseResult) -> str:
    """A failed clause as the terminal report prints it, with the implementation's
    traceback."""
    from normspec.conformance.report_terminal import result_lines

    lines = result_lines(result, traceback=True)
    lines[0] = f"{result.outcome.upper()} {result.clause_id} ({result.level}): {result.summary}"
    return "\n".join(lines)
