"""The ``normspec`` command line. Exit codes: 0 success, 1 not conformant, 2 usage error,
3 nothing checked (``normspec check``: no selected clause applied), 130 interrupted
(``normspec check`` before any failure, ``normspec report``: each keeps what finished)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from normspec import spec, storage
from normspec.adapters.jax import compile_cache
from normspec.adapters.jax import devices as jax_devices

EXIT_OK = 0
EXIT_NOT_CONFORMANT = 1
EXIT_USAGE = 2
#: ``normspec check`` ran, but no selected clause applied to the implementation: a CI gate
#: must not read that as a pass.
EXIT_NOTHING_CHECKED = 3
#: ``normspec report`` stopped by Ctrl-C (the files hold what finished).
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A mistake in how normspec was called: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _spec_command(args: argparse.Namespace) -> int:
    if args.clause_id:
        try:
            print(spec.clause(args.clause_id).render(), end="")
        except spec.UnknownClauseError:
            raise UsageError(
                f"unknown clause {args.clause_id!r}; `normspec spec` lists them"
            ) from None
        return EXIT_OK
    items = spec.clauses()
    width = max(len(item.id) for item in items)
    for item in items:
        print(f"{item.id:<{width}}  {item.level:<6}  {item.summary}")
    print(f"\n{len(items)} clauses, specification {spec.SPEC_VERSION}")
    return EXIT_OK


def _dtypes(args: argparse.Namespace) -> list[str] | None:
    return [d.strip() for d in args.dtype.split(",")] if args.dtype else None


def _options_error(problem: Any) -> UsageError:
    """An invalid setting (``OptionsError``) as the usage error naming its option."""
    return UsageError(problem.spelled(f"--{(problem.setting or '').replace('_', '-')}"))


def _add_menu(parser: argparse.ArgumentParser) -> None:
    from normspec.conformance.menu import DEFAULT_MENU_SIZE

    parser.add_argument(
        "--menu",
        type=int,
        metavar="N",
        help="draw every case's setting (shape, rate, eps, ...) from a per-run menu of N "
        "entries per dtype, 0 to draw them freely (default: for an implementation that "
        f"compiles per shape, such as JAX's, {DEFAULT_MENU_SIZE} per 40 examples per clause, "
        "so that its compilations stay few; none otherwise)",
    )


def _add_isolation(parser: argparse.ArgumentParser) -> None:
    from normspec.worker import default_memory_limit, format_bytes

    default = default_memory_limit()
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="call the implementation in this process instead of a worker process (for "
        "debugging: a crash then ends normspec, and after a hang nothing is called again)",
    )
    parser.add_argument(
        "--memory-limit",
        type=float,
        metavar="GIB",
        help="the worker process's resident memory limit, GiB; a call that exceeds it is "
        "reported crashed (default: half this machine's memory, "
        f"{format_bytes(default) if default else 'unknown here'}; 0: none; Linux only)",
    )


def _add_jobs(parser: argparse.ArgumentParser) -> None:
    from normspec.conformance.lanes import JOBS_SETTING, MOST_AUTOMATIC_JOBS

    parser.add_argument(
        "--jobs",
        default=os.environ.get(JOBS_SETTING, "auto"),
        metavar="N",
        help="spread the clauses over N processes, each with its own copy of the "
        f"implementation; the report is the same for any N (default ${JOBS_SETTING}, else "
        f"auto: the cores this process may use, at most {MOST_AUTOMATIC_JOBS}; 1: this "
        "process alone)",
    )


def _jobs(args: argparse.Namespace) -> int:
    """``--jobs``: a number of processes, or ``auto``."""
    from normspec.conformance.lanes import JOBS_SETTING, automatic_jobs

    if args.jobs == "auto":
        return automatic_jobs()
    try:
        return int(args.jobs)
    except ValueError:
        raise UsageError(
            f"--jobs (or ${JOBS_SETTING}) takes a number of processes or auto, not {args.jobs!r}"
        ) from None


def _isolation(args: argparse.Namespace) -> Any:
    """The Isolation the options ask for, ``None`` for --in-process."""
    from normspec.conformance.isolation import Isolation

    if args.in_process:
        return None
    if args.memory_limit is not None and args.memory_limit < 0:
        raise UsageError("--memory-limit takes a number of GiB, 0 for none")
    if args.memory_limit is None:
        return Isolation()
    return Isolation(memory_limit=int(args.memory_limit * 2**30) or None)


def _add_shrink_seconds(parser: argparse.ArgumentParser) -> None:
    from normspec.conformance.shrinking import DEFAULT_SHRINK_SECONDS

    parser.add_argument(
        "--shrink-seconds",
        type=float,
        default=DEFAULT_SHRINK_SECONDS,
        help=f"time limit on shrinking one failure to its smallest example, seconds (default "
        f"{DEFAULT_SHRINK_SECONDS:g}; a report says when an example was still shrinking)",
    )


def _check_command(args: argparse.Namespace) -> int:
    from normspec.adapters.registry import TargetError
    from normspec.conformance.deviations import (
        DeviationApplier,
        DeviationFileError,
        load_deviations,
    )
    from normspec.conformance.lanes import close_lanes, launch_lanes
    from normspec.conformance.report_json import write_json
    from normspec.conformance.report_junit import write_junit
    from normspec.conformance.report_terminal import print_summary
    from normspec.conformance.run_settings import OptionsError
    from normspec.conformance.runner import CheckOptions, select_checks
    from normspec.reference.dialects import profile

    try:
        options = CheckOptions(
            profile=args.profile,
            dtypes=_dtypes(args),
            clauses=args.clauses,
            max_examples=args.max_examples,
            seed=args.seed,
            timeout=args.timeout,
            target=args.target,
            shrink_seconds=args.shrink_seconds,
            menu=args.menu,
            jobs=_jobs(args),
        )
    except OptionsError as problem:
        raise _options_error(problem) from None
    isolation = _isolation(args)
    dialect = profile(args.profile)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # targets in the current project, as `python -m` does
    try:
        deviations = load_deviations(args.deviations)
    except DeviationFileError as problem:
        raise UsageError(str(problem)) from None
    applier = DeviationApplier(deviations.for_run(args.target, dialect.name))
    # the other processes load the target while this one does
    lanes = launch_lanes(args.target, isolation, options, len(select_checks(options.clauses)))
    try:
        report = _checked(args, options, isolation, applier, lanes)
    except TargetError as problem:
        raise UsageError(str(problem)) from None
    finally:
        close_lanes(lanes)
    applier.finish(report)
    print_summary(report, sys.stdout)
    if args.json:
        write_json(report, args.json)
    if args.junit:
        write_junit(report, args.junit)
    return exit_code(report)


def _checked(
    args: argparse.Namespace, options: Any, isolation: Any, applier: Any, lanes: Any
) -> Any:
    """The report of ``normspec check``'s run on the target it loads (``TargetError`` where
    it does not), each result printed as it comes with ``applier``'s deviations applied;
    ``lanes``: the other processes, launched already."""
    from normspec.conformance.isolation import IsolatedImplementation, load_implementation
    from normspec.conformance.report_terminal import print_header, progress_line
    from normspec.conformance.run_settings import OptionsError
    from normspec.conformance.runner import check_implementation

    implementation = load_implementation(args.target, args.profile, isolation, timeout=args.timeout)
    stream = sys.stdout

    def progress(result: Any) -> None:
        applier(result)
        print(progress_line(result), file=stream, flush=True)

    try:
        return check_implementation(
            implementation,
            options,
            progress=progress,
            on_start=lambda r: print_header(r, stream),
            lanes=lanes,
        )
    except OptionsError as problem:
        raise _options_error(problem) from None
    finally:
        if isinstance(implementation, IsolatedImplementation):
            implementation.close()


def exit_code(report: Any) -> int:
    """``normspec check``'s exit code for a finished report: a run interrupted before any
    failure is no pass (a CI gate cancelled halfway must not read 0)."""
    if not report.conformant:
        return EXIT_NOT_CONFORMANT
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_NOTHING_CHECKED if report.verdict == "nothing applicable" else EXIT_OK


def _parse_implementations(items: Sequence[str] | None) -> list[Any]:
    """``--implementations``: built-in targets by name, or TARGET[@PROFILE] (default paper);
    PROFILE is a built-in profile's name or a profile file's path."""
    from normspec.adapters.declarations import BuiltinTarget
    from normspec.adapters.registry import looks_like_target
    from normspec.conformance.builtin import BUILTIN_TARGETS, find_builtin
    from normspec.reference.dialects import ProfileError, profile

    if not items:
        return list(BUILTIN_TARGETS)
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    chosen = []
    for name in names:
        target, _, profile_name = name.partition("@")
        if profile_name:
            try:
                profile(profile_name)
            except ProfileError as problem:
                raise UsageError(f"{problem} (in {name!r})") from None
        builtin = find_builtin(target)
        if builtin is not None:
            if profile_name:
                builtin = BuiltinTarget(
                    builtin.target, profile_name, builtin.frameworks, builtin.label
                )
            chosen.append(builtin)
        elif looks_like_target(target):
            chosen.append(BuiltinTarget(target, profile_name or "paper"))
        else:
            known = ", ".join(e.target for e in BUILTIN_TARGETS)
            raise UsageError(
                f"unknown implementation {target!r}: a built-in one ({known}) or "
                "TARGET[@PROFILE] (package.module:attr, model.onnx#Node, onnxruntime(opset=9))"
            )
    return chosen


def _report_command(args: argparse.Namespace) -> int:
    from normspec.conformance.deviations import DeviationFileError, load_deviations
    from normspec.conformance.matrix import (
        OUTPUT_FILES,
        Matrix,
        MatrixOptions,
        run_matrix,
        write_matrix,
    )
    from normspec.conformance.run_settings import OptionsError

    try:
        options = MatrixOptions(
            max_examples=args.max_examples,
            seed=args.seed,
            dtypes=_dtypes(args),
            clauses=args.clauses,
            timeout=args.timeout,
            shrink_seconds=args.shrink_seconds,
            menu=args.menu,
            jobs=_jobs(args),
            paper=not args.no_paper,
            isolation=_isolation(args),
        )
    except OptionsError as problem:
        raise _options_error(problem) from None
    entries = _parse_implementations(args.implementations)
    try:
        deviations = load_deviations(args.deviations)
    except DeviationFileError as problem:
        raise UsageError(str(problem)) from None
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    out = args.out

    def write(matrix: Matrix) -> None:
        write_matrix(matrix, out)

    print(
        f"normspec report: {len(entries)} implementation(s), {args.max_examples} examples per "
        f"clause, seed {args.seed}; writing {out}/ after each run",
        flush=True,
    )
    try:
        matrix = run_matrix(
            entries, options, deviations=deviations, stream=sys.stdout, on_update=write
        )
    except OptionsError as problem:
        raise _options_error(problem) from None
    print()
    for column in matrix.columns:
        report = column.report
        verdict = report.verdict if report.conformant else "NOT conformant"
        print(f"  {column.title}: {verdict}")
    for item in matrix.unavailable:
        print(f"  {item.label} [{item.profile}]: not checked: {item.reason}")
    for kind, name in OUTPUT_FILES.items():
        print(f"{kind:>8}: {os.path.join(out, name)}")
    if matrix.interrupted:
        print("interrupted: the files hold the runs that finished", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _identify_command(args: argparse.Namespace) -> int:
    import json

    from normspec.adapters.registry import TargetError, load_target
    from normspec.conformance.identify import DEFAULT_PROFILE_FILE, identify, write_profile_file
    from normspec.reference.dialects import profile

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        dialect = profile(args.profile)
        implementation = load_target(args.target, args.profile)
    except TargetError as problem:
        raise UsageError(str(problem)) from None
    except KeyError as problem:
        raise UsageError(str(problem.args[0])) from None
    found = identify(
        implementation,
        args.target,
        timeout=args.timeout,
        also=dialect if dialect.source is not None else None,
    )
    written = None
    if args.write_profile or not found.profiles:
        path = args.write_profile or DEFAULT_PROFILE_FILE
        written = write_profile_file(found, path, overwrite=bool(args.write_profile))
    if args.json:
        print(json.dumps({**found.to_json(), "profile_file": written}, indent=2))
    else:
        print(found.render() + (f"{written}\n" if written else ""), end="")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="normspec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    listing = commands.add_parser("spec", help="list the clauses, or print one")
    listing.add_argument("clause_id", nargs="?", help="a clause ID such as bn.train.output")
    listing.set_defaults(run=_spec_command)
    checking = commands.add_parser(
        "check",
        help="check an implementation against the specification",
        description="Check TARGET (package.module:attr, or 'reference') clause by clause, "
        "its calls in a worker process (a crash or a hang is reported and the run goes on). "
        "Exit code 0: conformant; 1: not conformant (a clause failed, errored, crashed or "
        "hung); 2: usage error; 3: nothing checked (no selected clause applies to TARGET); "
        "130: interrupted (Ctrl-C) before any failure.",
    )
    checking.add_argument("target", help="package.module:attr, or reference")
    checking.add_argument(
        "--profile",
        default="paper",
        help="the dialect claimed: a built-in profile's name or a profile file (.toml or "
        ".json); default paper",
    )
    checking.add_argument("--dtype", help="comma-separated dtypes (default: all supported)")
    checking.add_argument("--clauses", help="comma-separated clause ID patterns, e.g. 'bn.train.*'")
    checking.add_argument("--max-examples", type=int, help="examples per clause (default 40)")
    checking.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    checking.add_argument("--timeout", type=float, default=60.0, help="per-call limit, seconds")
    _add_isolation(checking)
    _add_shrink_seconds(checking)
    _add_menu(checking)
    _add_jobs(checking)
    checking.add_argument("--json", help="write the JSON report here")
    checking.add_argument("--junit", help="write JUnit XML here")
    checking.add_argument(
        "--deviations",
        action="append",
        metavar="FILE",
        help="a deviation file (TOML) listing clauses the implementation knowingly breaks; "
        "they are reported as declared and do not fail the run (repeatable)",
    )
    checking.set_defaults(run=_check_command)

    from normspec.conformance.matrix import DEFAULT_REPORT_MAX_EXAMPLES

    reporting = commands.add_parser(
        "report",
        help="check every built-in implementation installed; write the conformance matrix",
        description="Check every built-in implementation whose framework is installed (the "
        "reference always), under its own profile and the paper's, and write the conformance "
        "matrix as HTML, Markdown and JSON into --out, after every run. Ctrl-C stops it and "
        "keeps what finished. Exit code 0: written; 2: usage error; 130: interrupted.",
    )
    reporting.add_argument(
        "--out", default="normspec-report", help="output directory (default normspec-report)"
    )
    reporting.add_argument(
        "--max-examples",
        type=int,
        default=DEFAULT_REPORT_MAX_EXAMPLES,
        help=f"examples per clause (default {DEFAULT_REPORT_MAX_EXAMPLES}, fewer than "
        "normspec check's 40: the report runs several implementations)",
    )
    reporting.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    reporting.add_argument(
        "--implementations",
        nargs="+",
        metavar="NAME",
        help="built-in targets by name (reference, torch.nn:BatchNorm2d, torch.functional, "
        "...) or package.module:attr[@PROFILE], PROFILE a built-in profile's name or a profile "
        "file; default: every built-in one",
    )
    reporting.add_argument("--dtype", help="comma-separated dtypes (default: all supported)")
    reporting.add_argument("--clauses", help="comma-separated clause ID patterns")
    reporting.add_argument("--timeout", type=float, default=60.0, help="per-call limit, seconds")
    _add_isolation(reporting)
    _add_shrink_seconds(reporting)
    _add_menu(reporting)
    _add_jobs(reporting)
    reporting.add_argument(
        "--deviations", action="append", metavar="FILE", help="a deviation file (repeatable)"
    )
    reporting.add_argument(
        "--no-paper", action="store_true", help="skip the runs under the paper's profile"
    )
    reporting.set_defaults(run=_report_command)

    identifying = commands.add_parser(
        "identify",
        help="probe an implementation and say which dialect (profile) it follows",
        description="Probe TARGET with known inputs: update-rate convention, running-variance "
        "estimator, cumulative average, step counter, zero-debiased averages, the momentum's "
        "domain, renorm averages; print the evidence and the profiles that match. Where none "
        "does, write the profile of what it measured as a file to commit and check with. "
        "Exit code 0; 2: usage error.",
    )
    identifying.add_argument("target", help="package.module:attr, or a built-in alias")
    identifying.add_argument(
        "--profile",
        default="paper",
        help="profile to load the target under, for adapters that emulate several dialects "
        "such as 'reference' (default paper); a profile file is matched against too",
    )
    identifying.add_argument(
        "--write-profile",
        metavar="PATH",
        help="write the profile of what was measured to PATH (TOML, or JSON for *.json); "
        "without it, a profile file is written only where no built-in profile matches, to "
        "./normspec-profile.toml unless that exists",
    )
    identifying.add_argument("--json", action="store_true", help="print the findings as JSON")
    identifying.add_argument("--timeout", type=float, default=30.0, help="per-call limit, seconds")
    identifying.set_defaults(run=_identify_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("check", "report", "identify"):
            compile_cache.enable()
            jax_devices.enable()
            storage.keep_hypothesis_files()
        code: int = args.run(args)
        return code
    except UsageError as problem:
        print(f"normspec: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into a pager or head that closed early
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        print("normspec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
