"""The ``normspec`` command line. Exit codes: 0 success, 1 not conformant, 2 usage error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="normspec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    listing = commands.add_parser("spec", help="list the clauses, or print one")
    listing.add_argument("clause_id", nargs="?", help="a clause ID such as bn.train.output")
    listing.set_defaults(run=_spec_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code: int = args.run(args)
        return code
    except UsageError as problem:
        print(f"normspec: error: {problem}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
