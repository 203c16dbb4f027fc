"""Speed of a default check: examples per second and seconds per clause, and the total time.

    python benchmarks/check_speed.py [TARGET] [--profile NAME] [--repeat N]

The baseline in the same run is the reference adapter (``reference``); pass a TARGET such
as ``torch.nn:BatchNorm2d`` to see another implementation beside it. Medians over repeats.
The total is wall-clock time and the process's CPU time (user + system, the honest figure
on a machine other processes share).
"""

from __future__ import annotations

import argparse
import statistics
import time

from normspec.adapters.registry import load_target
from normspec.conformance.runner import CheckOptions, check_implementation

Measured = tuple[float, float, dict[str, tuple[float, float]]]


def measure(target: str, profile: str, repeat: int) -> Measured:
    """Median wall and CPU seconds of a default check, and per clause the median examples
    per second and seconds."""
    totals: list[float] = []
    cpu: list[float] = []
    rates: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for seed in range(repeat):
        implementation = load_target(target, profile)
        started, cpu_started = time.perf_counter(), time.process_time()
        report = check_implementation(implementation, CheckOptions(profile=profile, seed=seed))
        totals.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
        for result in report.results:
            if result.examples and result.seconds > 0:
                rates.setdefault(result.clause_id, []).append(result.examples / result.seconds)
                seconds.setdefault(result.clause_id, []).append(result.seconds)
    per_clause = {
        k: (statistics.median(v), statistics.median(seconds[k])) for k, v in rates.items()
    }
    return statistics.median(totals), statistics.median(cpu), per_clause


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", nargs="?", default="reference")
    parser.add_argument("--profile", default="torch")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    targets = ["reference"] + ([args.target] if args.target != "reference" else [])
    measured = {t: measure(t, args.profile, args.repeat) for t in targets}
    clauses = sorted({c for *_, rates in measured.values() for c in rates})
    nan = (float("nan"), float("nan"))
    print(f"examples per second and seconds per clause (median of {args.repeat} default checks)")
    print(f"{'clause':<34}" + "".join(f"{t[:22]:>24}" for t in targets))
    for clause in clauses:
        cells = (measured[t][2].get(clause, nan) for t in targets)
        print(f"{clause:<34}" + "".join(f"{rate:>15.1f}/s{secs:>6.2f}s" for rate, secs in cells))
    print(f"{'total seconds (median)':<34}" + "".join(f"{measured[t][0]:>24.1f}" for t in targets))
    print(f"{'CPU seconds (median)':<34}" + "".join(f"{measured[t][1]:>24.1f}" for t in targets))


if __name__ == "__main__":
    main()
