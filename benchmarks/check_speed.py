"""Speed of a default check: examples per second per clause and the total time.

    python benchmarks/check_speed.py [TARGET] [--profile NAME] [--repeat N]

The baseline in the same run is the reference adapter (``reference``); pass a TARGET such
as ``torch.nn:BatchNorm2d`` to see another implementation beside it. Medians over repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

from normspec.adapters.registry import load_target
from normspec.conformance.runner import CheckOptions, check_implementation


def measure(target: str, profile: str, repeat: int) -> tuple[float, dict[str, float]]:
    totals: list[float] = []
    rates: dict[str, list[float]] = {}
    for seed in range(repeat):
        implementation = load_target(target, profile)
        started = time.perf_counter()
        report = check_implementation(implementation, CheckOptions(profile=profile, seed=seed))
        totals.append(time.perf_counter() - started)
        for result in report.results:
            if result.examples and result.seconds > 0:
                rates.setdefault(result.clause_id, []).append(result.examples / result.seconds)
    return statistics.median(totals), {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", nargs="?", default="reference")
    parser.add_argument("--profile", default="torch")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    targets = ["reference"] + ([args.target] if args.target != "reference" else [])
    measured = {t: measure(t, args.profile, args.repeat) for t in targets}
    clauses = sorted({c for _, rates in measured.values() for c in rates})
    print(f"examples per second per clause (median of {args.repeat} default checks)")
    print(f"{'clause':<34}" + "".join(f"{t[:22]:>24}" for t in targets))
    for clause in clauses:
        row = "".join(f"{measured[t][1].get(clause, float('nan')):>24.1f}" for t in targets)
        print(f"{clause:<34}{row}")
    print(f"{'total seconds (median)':<34}" + "".join(f"{measured[t][0]:>24.1f}" for t in targets))


if __name__ == "__main__":
    main()
