"""The ``normspec`` command line. Exit codes: 0 success, 1 not conformant, 2 usage error."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from normspec import spec

EXIT_OK = 0
EXIT_NOT_CONFORMANT = 1
EXIT_USAGE = 2


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


def _check_command(args: argparse.Namespace) -> int:
    from normspec.adapters.registry import TargetError, load_target
    from normspec.conformance.report_json import write_json
    from normspec.conformance.report_junit import write_junit
    from normspec.conformance.report_terminal import print_header, print_summary, progress_line
    from normspec.conformance.runner import CheckOptions, OptionsError, check_implementation

    if args.max_examples is not None and args.max_examples < 1:
        raise UsageError("--max-examples must be at least 1")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    dtypes = [d.strip() for d in args.dtype.split(",")] if args.dtype else None
    options = CheckOptions(
        profile=args.profile,
        dtypes=dtypes,
        clauses=args.clauses,
        max_examples=args.max_examples,
        seed=args.seed,
        timeout=args.timeout,
        target=args.target,
    )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # targets in the current project, as `python -m` does
    try:
        from normspec.reference.dialects import profile

        profile(args.profile)
        implementation = load_target(args.target, args.profile)
        from normspec.conformance.runner import select_checks

        select_checks(args.clauses)
    except (TargetError, OptionsError) as problem:
        raise UsageError(str(problem)) from None
    except KeyError as problem:
        raise UsageError(str(problem.args[0])) from None
    stream = sys.stdout

    def progress(result: Any) -> None:
        print(progress_line(result), file=stream, flush=True)

    try:
        report = check_implementation(
            implementation, options, progress=progress, on_start=lambda r: print_header(r, stream)
        )
    except OptionsError as problem:
        raise UsageError(str(problem)) from None
    print_summary(report, stream)
    if args.json:
        write_json(report, args.json)
    if args.junit:
        write_junit(report, args.junit)
    return EXIT_OK if report.conformant else EXIT_NOT_CONFORMANT


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="normspec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    listing = commands.add_parser("spec", help="list the clauses, or print one")
    listing.add_argument("clause_id", nargs="?", help="a clause ID such as bn.train.output")
    listing.set_defaults(run=_spec_command)
    checking = commands.add_parser(
        "check",
        help="check an implementation against the specification",
        description="Check TARGET (package.module:attr, or 'reference') clause by clause. "
        "Exit code 0: conformant; 1: not conformant; 2: usage error.",
    )
    checking.add_argument("target", help="package.module:attr, or reference")
    checking.add_argument("--profile", default="paper", help="the dialect claimed (default paper)")
    checking.add_argument("--dtype", help="comma-separated dtypes (default: all supported)")
    checking.add_argument("--clauses", help="comma-separated clause ID patterns, e.g. 'bn.train.*'")
    checking.add_argument("--max-examples", type=int, help="examples per clause (default 40)")
    checking.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    checking.add_argument("--timeout", type=float, default=60.0, help="per-call limit, seconds")
    checking.add_argument("--json", help="write the JSON report here")
    checking.add_argument("--junit", help="write JUnit XML here")
    checking.set_defaults(run=_check_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code: int = args.run(args)
        return code
    except UsageError as problem:
        print(f"normspec: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into a pager or head that closed early
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
