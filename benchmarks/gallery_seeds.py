"""How reliably a default check catches each gallery bug under its clause, over seeds.

    .venv/bin/python benchmarks/gallery_seeds.py [BUG ...] [--weak] [--seeds 10]
        [--dtype float32] [--max-examples N] [--all-clauses] [--menu N]

For each bug of the gallery (tests/gallery/bugs.py and family_bugs.py; BUG names select some, ``--weak`` the
ones tests/conformance/test_gallery.py lists in KNOWN_WEAK_DETECTION) and each seed 0 to
N - 1, this runs the check the gallery's catch test runs: the default example budget, the
bug's profile, its primary clause (the first of ``expected_clauses``) with the clauses it
depends on (``--all-clauses``: every clause). Per bug it prints in how many seeds the bug
was caught under its clause (the primary clause failed or errored), caught elsewhere only
(another clause did, the primary was skipped or passed), or missed, the seeds that were
not caught under the clause, and the seconds taken. ``--menu N`` draws the settings from
a menu of N entries per dtype, as for an implementation that compiles per shape (the
gallery's bugs are NumPy layers, checked without a menu by default): how much of the
gallery a menu still catches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "conformance")]

from gallery.bugs import BUGS, RENORM_BUGS  # noqa: E402
from gallery.family_bugs import FAMILY_BUGS  # noqa: E402
from test_gallery import KNOWN_WEAK_DETECTION, with_dependencies  # noqa: E402

from normspec.conformance.runner import CheckOptions, check_implementation  # noqa: E402

CAUGHT = ("fail", "error")


def classify(bug: type, seed: int, args: argparse.Namespace) -> str:
    """``clause``, ``elsewhere`` or ``missed`` for one seed."""
    primary = bug.expected_clauses[0]
    options = CheckOptions(
        profile=bug.profile,
        dtypes=(args.dtype,) if args.dtype else None,
        clauses=None if args.all_clauses else ",".join(with_dependencies(primary)),
        max_examples=args.max_examples,
        seed=seed,
        menu=args.menu,
    )
    report = check_implementation(bug(), options)
    if report.outcome(primary) in CAUGHT:
        return "clause"
    if any(r.outcome in CAUGHT for r in report.results):
        return "elsewhere"
    return "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("bugs", nargs="*", help="gallery class names (default: all)")
    parser.add_argument("--weak", action="store_true", help="the KNOWN_WEAK_DETECTION bugs")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--dtype", default=None, help="check this dtype only")
    parser.add_argument("--max-examples", type=int, default=None, help="default: the engine's")
    parser.add_argument("--all-clauses", action="store_true")
    parser.add_argument("--menu", type=int, default=None, help="a settings menu of N entries")
    args = parser.parse_args()
    gallery = {bug.__name__: bug for bug in (*BUGS, *RENORM_BUGS, *FAMILY_BUGS)}
    names = list(args.bugs) + (list(KNOWN_WEAK_DETECTION) if args.weak else [])
    unknown = [n for n in names if n not in gallery]
    if unknown:
        parser.error(f"no gallery bug named {', '.join(unknown)}")
    selected = [gallery[n] for n in dict.fromkeys(names)] or list(gallery.values())
    print(
        f"{args.seeds} seeds, max_examples={args.max_examples or 'default'}, "
        f"menu={args.menu if args.menu is not None else 'default'}"
    )
    print(f"{'bug':<42}{'clause':<34}{'caught':>7}{'elsewh':>7}{'missed':>7}{'s':>7}  not caught")
    totals = {"clause": 0, "elsewhere": 0, "missed": 0}
    for bug in selected:
        counts = {"clause": 0, "elsewhere": 0, "missed": 0}
        not_caught: list[str] = []
        started = time.perf_counter()
        for seed in range(args.seeds):
            outcome = classify(bug, seed, args)
            counts[outcome] += 1
            if outcome != "clause":
                not_caught.append(f"{seed}:{outcome}")
        for key, value in counts.items():
            totals[key] += value
        print(
            f"{bug.__name__:<42}{bug.expected_clauses[0]:<34}{counts['clause']:>7}"
            f"{counts['elsewhere']:>7}{counts['missed']:>7}"
            f"{time.perf_counter() - started:>7.1f}  {' '.join(not_caught)}",
            flush=True,
        )
    print(f"{'total':<76}{totals['clause']:>7}{totals['elsewhere']:>7}{totals['missed']:>7}")


if __name__ == "__main__":
    main()
