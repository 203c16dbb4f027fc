"""Every adapter's default check against the one-minute budget, cold and warm, beside the
reference.

    python benchmarks/adapter_budget.py [TARGET[@PROFILE] ...] [--seed S] [--repeat N]

TARGETs default to every built-in target whose frameworks are installed (the adapter
packages' declarations, each under the profile it declares); a TARGET of your own is
checked under PROFILE (default paper). The baseline is ``reference``, checked the same
way in the same run. Each target is checked twice by the command a user types,
``normspec check TARGET --profile NAME --seed S``, in a fresh process each time with
normspec's persistent compilation cache in a new empty directory: *cold* (the cache
empty: every program compiled) then *warm* (the programs the first run compiled loaded
from the cache, as in a user's second run or a CI that keeps the cache). Printed side by
side: wall time, CPU time of the process and its children (on a shared machine the better
guide to an idle one), whether the cold median is within the budget, the exit code (1:
not conformant) and the failed clauses. Figures are medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from normspec.adapters.declarations import collected

#: The default check's budget on 2 cores (README: the one-minute default budget).
BUDGET_SECONDS = 60.0

FAILED = re.compile(r"^  FAIL\s+(\S+)", re.MULTILINE)


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    exit_code: int
    failed: tuple[str, ...]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check(target: str, profile: str, seed: int, cache: str) -> Run:
    """``normspec check`` in a fresh process, its compilation cache in ``cache``."""
    command = [sys.executable, "-m", "normspec", "check", target]
    command += ["--profile", profile, "--seed", str(seed)]
    environment = {**os.environ, "NORMSPEC_COMPILATION_CACHE": cache}
    environment.pop("JAX_COMPILATION_CACHE_DIR", None)
    cpu, started = children_cpu(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    wall, cpu = time.perf_counter() - started, children_cpu() - cpu
    if done.returncode not in (0, 1):
        sys.exit(f"normspec check {target} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return Run(wall, cpu, done.returncode, tuple(FAILED.findall(done.stdout)))


def installed_targets() -> list[tuple[str, str]]:
    """Every reported built-in target whose frameworks are installed, with its profile."""
    found = []
    for entry in collected().targets:
        if entry.reported and all(importlib.util.find_spec(f) for f in entry.frameworks):
            found.append((entry.target, entry.profile))
    return found


def median_run(runs: list[Run]) -> Run:
    """The median wall and CPU seconds of ``runs`` (the first run's verdict)."""
    return Run(
        statistics.median(r.wall for r in runs),
        statistics.median(r.cpu for r in runs),
        runs[0].exit_code,
        runs[0].failed,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="*", help="TARGET[@PROFILE] (default: the built-ins)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    chosen = [tuple(t.partition("@")[::2]) for t in args.targets] or installed_targets()
    targets = [("reference", "paper")] + [(t, p or "paper") for t, p in chosen if t != "reference"]
    runs: dict[str, tuple[Run, Run]] = {}
    for target, profile in targets:
        cold, warm = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix="normspec-cache-") as cache:
                cold.append(check(target, profile, args.seed, cache))
                warm.append(check(target, profile, args.seed, cache))
        runs[f"{target} [{profile}]"] = (median_run(cold), median_run(warm))
        print(f"  {target}: cold {runs[f'{target} [{profile}]'][0].wall:.1f} s", flush=True)
    print(
        f"\nnormspec check TARGET --profile PROFILE --seed {args.seed}, medians of "
        f"{args.repeat}, {os.cpu_count()} CPUs, budget {BUDGET_SECONDS:g} s"
    )
    width = max(len(name) for name in runs) + 2
    print(
        f"{'':<{width}}{'cold wall s':>12}{'cold CPU s':>11}{'warm wall s':>12}"
        f"{'warm CPU s':>11}{'budget':>8}{'exit':>6}"
    )
    for name, (cold, warm) in runs.items():
        within = "ok" if cold.wall <= BUDGET_SECONDS else "OVER"
        print(
            f"{name:<{width}}{cold.wall:>12.1f}{cold.cpu:>11.1f}{warm.wall:>12.1f}"
            f"{warm.cpu:>11.1f}{within:>8}{cold.exit_code:>6}"
        )
    for name, (cold, _) in runs.items():
        print(f"failed ({name}): {', '.join(cold.failed) or 'none'}")


if __name__ == "__main__":
    main()
