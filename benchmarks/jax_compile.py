"""Compilation in a default check of a JAX target: with the settings menu, and without.

    python benchmarks/jax_compile.py [TARGET] [--profile NAME] [--clauses PATTERN]
                                     [--max-examples N] [--dtype float32,...] [--seed S]
                                     [--menu N] [--no-baseline] [--per-clause] [--cache]

TARGET defaults to ``flax.linen``; a Keras-on-JAX target (``keras.renorm.jax``, run with
``KERAS_BACKEND=jax``: the check runs in this process) also counts its jitted calls and the
layer configurations they serve (``TracedCalls.compiled``). JAX compiles one XLA program per distinct (layer
configuration, operation, input shape, dtype). A check of an implementation that compiles
per shape draws every case's setting from a per-run menu (normspec.conformance.menu); the
baseline is the same check with settings drawn freely (``--menu 0``), where nearly every
example compiles anew. Each runs cold, in a fresh process (no persistent compilation
cache), and the two are printed side by side: wall time (capabilities probe included, as
``normspec check`` pays it), CPU time (on a shared machine the better guide to an idle
one), XLA compilations and their backend seconds, tracing and lowering seconds (JAX's own
monitoring events), examples, and the clauses that failed. ``--per-clause`` also prints
each run's clauses with their seconds and compilations.

``--cache`` runs as ``normspec check`` does cold: with JAX's persistent compilation cache
on, in a new empty directory, so that a program identical to one compiled earlier in the
run (the same HLO) is loaded rather than compiled; its loads are counted. Every run also
counts its compilations by jitted function, and those whose function and argument shapes
and dtypes were compiled before (*same-shape variants*: the same operation on the same
shapes for a layer of another eps or momentum, which are static in the program).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

COMPILE = "/jax/core/compile/backend_compile_duration"
TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
CACHE_HIT = "/jax/compilation_cache/cache_retrieval_time_sec"


class Compilations(logging.Handler):
    """JAX's compilation log (``jax_log_compiles``): programs by jitted function, and the
    same-shape variants (a function and signature compiled before)."""

    def __init__(self) -> None:
        super().__init__()
        self.functions: collections.Counter[str] = collections.Counter()
        self.signatures: set[str] = set()
        self.variants = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not message.startswith("Compiling "):
            return
        self.functions[message.split()[1]] += 1
        signature = message.split(". Argument mapping")[0]
        self.variants += signature in self.signatures
        self.signatures.add(signature)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One cold check in this process: its figures."""
    from normspec.adapters.jax import devices as jax_devices

    jax_devices.enable()  # the sync.* clauses' devices, as the command line asks for them
    if args.cache:
        from normspec.adapters.jax import compile_cache

        compile_cache.enable()  # NORMSPEC_COMPILATION_CACHE: a new directory (run_cold)
    import jax
    from jax import monitoring

    from normspec.adapters.registry import load_target
    from normspec.conformance.results import ClauseResult
    from normspec.conformance.runner import CheckOptions, check_implementation

    count: collections.Counter[str] = collections.Counter()
    seconds: collections.Counter[str] = collections.Counter()

    def record(event: str, duration: float, **_: Any) -> None:
        count[event] += 1
        seconds[event] += duration

    monitoring.register_event_duration_secs_listener(record)
    compilations = Compilations()
    jax.config.update("jax_log_compiles", True)
    jax_logger = logging.getLogger("jax")
    jax_logger.addHandler(compilations)
    jax_logger.propagate = False  # counted, not printed
    sys.path.insert(0, os.getcwd())  # targets in the current project, as normspec check finds them
    started, cpu_started = time.perf_counter(), time.process_time()
    implementation = load_target(args.target, args.profile)
    implementation.capabilities()
    clauses: list[list[Any]] = []
    last = [0]

    def progress(result: ClauseResult) -> None:
        compiles, last[0] = count[COMPILE] - last[0], count[COMPILE]
        clauses.append(
            [result.clause_id, result.outcome, result.examples, result.seconds, compiles]
        )

    options = CheckOptions(
        profile=args.profile,
        dtypes=args.dtype.split(",") if args.dtype else None,
        clauses=args.clauses,
        max_examples=args.max_examples,
        seed=args.seed,
        target=args.target,
        menu=args.menu,
    )
    report = check_implementation(implementation, options, progress=progress)
    traced = getattr(implementation, "traced", None)  # Keras on JAX: its jitted calls
    compiled = traced.compiled() if traced is not None else []
    return {
        "jitted": len(compiled),
        "configurations": len({key for key, _, training in compiled if training}),
        "menu": report.menu,
        "wall": time.perf_counter() - started,
        "cpu": time.process_time() - cpu_started,
        "compilations": count[COMPILE] - count[CACHE_HIT],
        "compile_seconds": seconds[COMPILE],
        "cache_hits": count[CACHE_HIT],
        "variants": compilations.variants,
        "functions": dict(compilations.functions.most_common()),
        "trace_seconds": seconds[TRACE] + seconds[LOWER],
        "examples": sum(r.examples for r in report.results),
        "failed": sorted(report.failed_clauses()),
        "clauses": [c for c in clauses if c[1] != "not_applicable"],
    }


def run_cold(args: argparse.Namespace, menu: int | None) -> dict[str, Any]:
    """:func:`measure` in a fresh process."""
    argv = [sys.executable, __file__, args.target, "--profile", args.profile, "--measure"]
    argv += ["--seed", str(args.seed)]
    for flag, value in (
        ("--clauses", args.clauses),
        ("--max-examples", args.max_examples),
        ("--dtype", args.dtype),
        ("--menu", menu),
    ):
        if value is not None:
            argv += [flag, str(value)]
    environment = dict(os.environ)
    environment.pop("JAX_COMPILATION_CACHE_DIR", None)
    with tempfile.TemporaryDirectory() as cache:
        if args.cache:
            argv.append("--cache")
            environment["NORMSPEC_COMPILATION_CACHE"] = cache
        done = subprocess.run(argv, capture_output=True, text=True, check=False, env=environment)
    if done.returncode != 0:
        sys.exit(f"the measuring process failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", nargs="?", default="flax.linen")
    parser.add_argument("--profile", default="flax")
    parser.add_argument("--clauses", default=None)
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--menu", type=int, default=None, help="default: the target's own")
    parser.add_argument("--no-baseline", action="store_true", help="skip the --menu 0 run")
    parser.add_argument("--per-clause", action="store_true")
    parser.add_argument("--cache", action="store_true", help="an empty persistent cache")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args)))
        return
    runs = {"menu": run_cold(args, args.menu)}
    if not args.no_baseline:
        runs["free (--menu 0)"] = run_cold(args, 0)
    print(f"{args.target} under {args.profile}, seed {args.seed}, cold (fresh process each)")
    rows = (
        ("menu entries per dtype", "menu", "{:d}"),
        ("wall time, s", "wall", "{:.1f}"),
        ("CPU time, s", "cpu", "{:.1f}"),
        ("XLA compilations", "compilations", "{:d}"),
        ("jitted calls (Keras)", "jitted", "{:d}"),
        ("configurations (Keras)", "configurations", "{:d}"),
        ("backend compile, s", "compile_seconds", "{:.1f}"),
        ("  loaded from the cache", "cache_hits", "{:d}"),
        ("  same-shape variants", "variants", "{:d}"),
        ("tracing and lowering, s", "trace_seconds", "{:.1f}"),
        ("examples", "examples", "{:d}"),
    )
    print(f"{'':<28}" + "".join(f"{name:>18}" for name in runs))
    for label, key, form in rows:
        print(f"{label:<28}" + "".join(f"{form.format(r[key]):>18}" for r in runs.values()))
    for name, figures in runs.items():
        print(f"\nfailed ({name}): {', '.join(figures['failed']) or 'none'}")
        functions = ", ".join(f"{f} {n}" for f, n in figures["functions"].items())
        print(f"compilations by function ({name}): {functions}")
        if args.per_clause:
            for clause, outcome, examples, secs, compiles in figures["clauses"]:
                print(f"  {clause:<36}{outcome:>8}{examples:>6}{secs:>7.1f} s{compiles:>6}")


if __name__ == "__main__":
    main()
