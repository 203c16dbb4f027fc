"""Compilation in a default check of a JAX target: how many programs, and what they cost.

    python benchmarks/jax_compile.py [TARGET] [--profile NAME] [--clauses PATTERN]
                                     [--max-examples N] [--dtype float32,...] [--seed S]

TARGET defaults to ``flax.linen``. JAX compiles one XLA program per distinct (layer
configuration, operation, input shape, dtype); Hypothesis draws a new shape for most
examples, so a check's time is mostly XLA compilation. This prints, per clause, the
examples, seconds and compilations, then the totals: wall and CPU time (on a shared
machine the CPU time is the better guide to an idle one), compilations and their backend
compile seconds, tracing and lowering seconds (JAX's own monitoring events), the share of
the wall time that compilation took, and the failures.

With JAX's persistent compilation cache (``JAX_COMPILATION_CACHE_DIR=DIR`` and
``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0``) a repeated check with the same seed
loads its programs instead of compiling them: run this twice to see the difference.
"""

from __future__ import annotations

import argparse
import collections
import time
from typing import Any

from normspec import jax_devices

jax_devices.enable()  # the sync.* clauses' devices, as the command line asks for them

from jax import monitoring  # noqa: E402  (after XLA_FLAGS is set)

from normspec.adapters.registry import load_target  # noqa: E402
from normspec.conformance.results import ClauseResult  # noqa: E402
from normspec.conformance.runner import CheckOptions, check_implementation  # noqa: E402

COMPILE = "/jax/core/compile/backend_compile_duration"
TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
CACHE_HIT = "/jax/compilation_cache/cache_retrieval_time_sec"


class Events:
    """Counts and total seconds of JAX's duration events, by event name."""

    def __init__(self) -> None:
        self.count: collections.Counter[str] = collections.Counter()
        self.seconds: collections.Counter[str] = collections.Counter()
        monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_: Any) -> None:
        self.count[event] += 1
        self.seconds[event] += duration

    def snapshot(self) -> tuple[dict[str, int], dict[str, float]]:
        return dict(self.count), dict(self.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", nargs="?", default="flax.linen")
    parser.add_argument("--profile", default="flax")
    parser.add_argument("--clauses", default=None)
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    events = Events()

    started, cpu_started = time.perf_counter(), time.process_time()
    implementation = load_target(args.target, args.profile)
    capabilities = implementation.capabilities()
    setup = time.perf_counter() - started
    setup_compiles = events.count[COMPILE]
    print(f"{implementation.name}")
    print(f"  capabilities (dtype probe): {setup:.1f} s, {setup_compiles} compilations")
    print(f"  dtypes: {', '.join(sorted(capabilities.dtypes))}")
    print(f"{'clause':<34}{'outcome':>10}{'examples':>10}{'seconds':>10}{'compiles':>10}")

    last = [events.count[COMPILE]]

    def progress(result: ClauseResult) -> None:
        compiles = events.count[COMPILE] - last[0]
        last[0] = events.count[COMPILE]
        print(
            f"{result.clause_id:<34}{result.outcome:>10}{result.examples:>10}"
            f"{result.seconds:>10.1f}{compiles:>10}",
            flush=True,
        )

    options = CheckOptions(
        profile=args.profile,
        dtypes=args.dtype.split(",") if args.dtype else None,
        clauses=args.clauses,
        max_examples=args.max_examples,
        seed=args.seed,
        target=args.target,
    )
    report = check_implementation(implementation, options, progress=progress)
    total = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    count, seconds = events.snapshot()
    compile_seconds = seconds.get(COMPILE, 0.0)
    trace_seconds = seconds.get(TRACE, 0.0) + seconds.get(LOWER, 0.0)
    print()
    print(f"wall time, capabilities included: {total:.1f} s (check alone {report.seconds:.1f} s)")
    print(f"CPU time of this process (all threads): {cpu:.1f} s")
    print(f"XLA compilations: {count.get(COMPILE, 0)}, {compile_seconds:.1f} s")
    print(f"tracing and lowering: {count.get(TRACE, 0)} traces, {trace_seconds:.1f} s")
    if count.get(CACHE_HIT):
        print(f"persistent-cache hits: {count[CACHE_HIT]}, {seconds[CACHE_HIT]:.1f} s")
    share = (compile_seconds + trace_seconds) / total if total else 0.0
    print(f"compilation share of the wall time: {share:.0%}")
    for result in report.results:
        if result.outcome in ("fail", "error"):
            print(f"\n{result.outcome.upper()} {result.clause_id}: {result.message}")
            example = result.details.get("example")
            if example:
                print(f"  minimal example: {example}")


if __name__ == "__main__":
    main()
