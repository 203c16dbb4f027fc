"""The default check of the haiku and equinox targets, cold and warm, beside the reference.

    python benchmarks/module_check.py [TARGET ...] [--profile NAME] [--seed S]

TARGETs default to ``haiku equinox equinox.ema``; the baseline is ``reference``, checked
the same way in the same run. Each target is checked twice by the command a user types,
``normspec check TARGET --profile NAME --seed S``, in a fresh process each time with
normspec's persistent compilation cache in a new empty directory: *cold* (the cache
empty: every program compiled) then *warm* (the programs the first run compiled loaded
from the cache, as in a user's second run or a CI that keeps the cache). Printed side by
side: wall time, CPU time of the process and its children (on a shared machine the better
guide to an idle one), the exit code (1: not conformant) and the failed clauses.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="*", default=["haiku", "equinox", "equinox.ema"])
    parser.add_argument("--profile", default="flax")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    runs: dict[str, tuple[Run, Run]] = {}
    for target in ["reference", *args.targets]:
        with tempfile.TemporaryDirectory(prefix="normspec-cache-") as cache:
            runs[target] = (
                check(target, args.profile, args.seed, cache),
                check(target, args.profile, args.seed, cache),
            )
    print(
        f"normspec check TARGET --profile {args.profile} --seed {args.seed}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'':<14}{'cold wall s':>13}{'cold CPU s':>12}{'warm wall s':>13}{'warm CPU s':>12}{'exit':>6}"
    )
    for target, (cold, warm) in runs.items():
        print(
            f"{target:<14}{cold.wall:>13.1f}{cold.cpu:>12.1f}{warm.wall:>13.1f}"
            f"{warm.cpu:>12.1f}{cold.exit_code:>6}"
        )
    for target, (cold, _) in runs.items():
        print(f"\nfailed ({target}): {', '.join(cold.failed) or 'none'}")


if __name__ == "__main__":
    main()
