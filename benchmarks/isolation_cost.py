"""What process isolation costs: the default check of every built-in target, in-process
(``--in-process``) and in a worker process (the default), side by side in one run.

    python benchmarks/isolation_cost.py [TARGET ...] [--repeat N] [--max-examples N]

Each check is a fresh ``normspec check TARGET --profile PROFILE`` process, cold (the
framework's import included, JAX's persistent compilation cache off), in both modes one
after the other, the order alternating between repeats. Printed per target: the median wall
seconds in each mode and their difference, the median CPU seconds (the check's process and
its workers: on a machine other processes share, the steadier figure), and whether both
modes reported the same outcome and example count for every clause (the same seed, the
same report; where the shrink time limit cut a failure's shrinking short, the example counts
may differ and only the outcomes are compared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: The built-in targets (conformance.builtin), each under its own profile; not
#: torch.nn:SyncBatchNorm (on the CPU its checks are torch.nn:BatchNorm2d's) nor
#: tf_keras.fused (tf_keras' other path).
TARGETS: tuple[tuple[str, str], ...] = (
    ("reference", "paper"),
    ("torch.nn:BatchNorm2d", "torch"),
    ("torch.functional", "torch"),
    ("flax.linen", "flax"),
    ("flax.nnx", "flax"),
    ("keras", "keras"),
    ("tf_keras", "tf_keras"),
    ("tf_keras.renorm", "tf_keras"),
    ("tf.nn", "tf_keras"),
    ("tf.nn.fused_batch_norm", "torch"),
)
MODES = ("in-process", "isolated")


#: A clause's outcome, and its example count unless shrinking was cut short (``None``).
Result = tuple[str, int | None]


def run_check(
    target: str, profile: str, mode: str, max_examples: int | None
) -> tuple[float, float, dict[str, Result]]:
    """Wall and CPU seconds of one check, and each clause's :data:`Result`."""
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory) / "report.json"
        command = [sys.executable, "-m", "normspec", "check", target, "--profile", profile]
        command += ["--json", str(report)]
        if max_examples:
            command += ["--max-examples", str(max_examples)]
        if mode == "in-process":
            command.append("--in-process")
        environment = {**os.environ, "NORMSPEC_COMPILATION_CACHE": "off"}
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, env=environment, capture_output=True, text=True)
        wall = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode not in (0, 1):
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr}")
        results = json.loads(report.read_text())["results"]
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return (
        wall,
        cpu,
        {
            r["clause"]: (r["outcome"], None if "shrinking" in r["details"] else r["examples"])
            for r in results
        },
    )


def differences(first: dict[str, Result], second: dict[str, Result]) -> list[str]:
    """The clauses whose results differ (example counts only where both are known)."""
    found = []
    for clause, (outcome, examples) in first.items():
        other_outcome, other_examples = second.get(clause, ("missing", None))
        counted = examples is not None and other_examples is not None
        if outcome != other_outcome or (counted and examples != other_examples):
            found.append(clause)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="*", help="targets (default: the built-in ones)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-examples", type=int, default=None)
    options = parser.parse_args()
    profiles = dict(TARGETS)
    targets = [(t, profiles.get(t, "paper")) for t in options.targets] or list(TARGETS)
    wall: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    differing: dict[str, set[str]] = {}
    for repeat in range(options.repeat):
        for target, profile in targets:
            order = MODES if repeat % 2 == 0 else MODES[::-1]
            outcomes = {}
            for mode in order:
                seconds, cpu_seconds, outcomes[mode] = run_check(
                    target, profile, mode, options.max_examples
                )
                wall.setdefault((target, mode), []).append(seconds)
                cpu.setdefault((target, mode), []).append(cpu_seconds)
                print(f"  [{repeat + 1}] {target} {mode}: {seconds:.1f} s", flush=True)
            found = differences(outcomes[MODES[0]], outcomes[MODES[1]])
            differing.setdefault(target, set()).update(found)
    print(f"\nmedian of {options.repeat} cold default checks (wall seconds; CPU seconds)")
    print(
        f"{'target':<24}{'in-process':>12}{'isolated':>10}{'cost':>8}"
        f"{'CPU in':>9}{'CPU iso':>9}  same report"
    )
    totals = {mode: 0.0 for mode in MODES}
    for target, _ in targets:
        medians = {mode: statistics.median(wall[target, mode]) for mode in MODES}
        cpus = {mode: statistics.median(cpu[target, mode]) for mode in MODES}
        for mode in MODES:
            totals[mode] += medians[mode]
        cost = medians["isolated"] / medians["in-process"] - 1
        print(
            f"{target:<24}{medians['in-process']:>12.1f}{medians['isolated']:>10.1f}"
            f"{cost:>+8.0%}{cpus['in-process']:>9.1f}{cpus['isolated']:>9.1f}  "
            f"{'NO: ' + ', '.join(sorted(differing[target])) if differing[target] else 'yes'}"
        )
    total_cost = totals["isolated"] / totals["in-process"] - 1
    print(f"{'all':<24}{totals['in-process']:>12.1f}{totals['isolated']:>10.1f}{total_cost:>+8.0%}")


if __name__ == "__main__":
    main()
