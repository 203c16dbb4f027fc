"""How much of a default check is the implementation's own work: a floor under its time.

    python benchmarks/implementation_share.py [TARGET[@PROFILE] ...] [--seed S] [--cores N]
                                              [-- CHECK OPTION ...]

TARGETs default to every built-in target whose frameworks are installed, each under the
profile its adapter declares, after ``reference`` (normspec's float64 reference checked as
an implementation). Each is checked cold, as ``benchmarks/adapter_budget.py`` does (a
fresh process, an empty compilation cache), but in one process (``--in-process --jobs
1``), so that every call into the implementation is timed where it runs: the process's CPU
time while the guard's thread runs the call (the checking thread waits meanwhile, so this
is the implementation's, its thread pools included), and for JAX its tracing, lowering and
XLA compiling (``jax.monitoring``).

Printed side by side: the check's wall and CPU seconds; the implementation's CPU seconds,
their share, how many of them were compiling and how many were the layer's own steps
(training steps, inferences, vjps: :data:`LAYER_STEPS`; the rest built layers and set or
read their parameters and statistics); normspec's own CPU seconds (drawing cases with
Hypothesis, computing expectations, comparing); and the implementation's CPU seconds
divided by ``--cores`` (default 2): however fast normspec becomes, the default check (its
clauses spread over the cores) cannot end sooner at the default number of examples. The
steps' CPU seconds divided by the cores are a floor even for an adapter whose layers cost
nothing to build and set.
Options after ``--`` are passed to ``normspec check`` (``-- --shrink-seconds 0.01``: the
examples without shrinking their failures).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from adapter_budget import chosen_targets, cold_environment

#: The JAX events counted as compiling: tracing to a jaxpr, lowering, XLA's compile.
COMPILE_EVENTS = frozenset(
    {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    }
)

#: The layer's own calls: what an example asks of a layer once it is built and set.
LAYER_STEPS = frozenset({"train_step", "infer", "vjp", "second_order_vjp"})


def timed_check(target: str, profile: str, seed: int, options: list[str]) -> dict[str, Any]:
    """``normspec check`` of ``target`` in this process, every call into it timed."""
    from normspec import cli
    from normspec.conformance import guard

    inside: Counter[str] = Counter()
    plain_run = guard._Call.run
    listening = False

    def on_event(event: str, seconds: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            inside["compile"] += seconds

    def timed_run(call: guard._Call) -> None:
        nonlocal listening
        if not listening and "jax" in sys.modules:  # imported by loading the target
            sys.modules["jax"].monitoring.register_event_duration_secs_listener(on_event)
            listening = True
        started = time.process_time()
        try:
            plain_run(call)
        finally:
            spent = time.process_time() - started
            inside["implementation"] += spent
            if getattr(call.function, "__name__", None) in LAYER_STEPS:
                inside["steps"] += spent

    guard._Call.run = timed_run  # type: ignore[method-assign]
    arguments = ["check", target, "--profile", profile, "--seed", str(seed)]
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    exit_code = cli.main([*arguments, *options, "--in-process", "--jobs", "1"])
    return {
        "wall": time.perf_counter() - started_wall,
        "cpu": time.process_time() - started_cpu,
        "implementation": inside["implementation"],
        "compile": inside["compile"],
        "steps": inside["steps"],
        "exit_code": exit_code,
    }


def measured(target: str, profile: str, seed: int, options: list[str]) -> dict[str, Any]:
    """:func:`timed_check` in a fresh process with an empty compilation cache."""
    with tempfile.TemporaryDirectory(prefix="normspec-cache-") as cache:
        command = [sys.executable, __file__, "--inner", target, profile, str(seed), "--", *options]
        done = subprocess.run(command, capture_output=True, text=True, env=cold_environment(cache))
    if done.returncode != 0:
        sys.exit(f"checking {target} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    if figures["exit_code"] not in (0, 1):
        sys.exit(f"normspec check {target} exited {figures['exit_code']}:\n{done.stderr[-3000:]}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="*", help="TARGET[@PROFILE] (default: the built-ins)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cores", type=int, default=2, help="the cores of the floor")
    parser.add_argument(
        "--inner", nargs=3, metavar=("TARGET", "PROFILE", "SEED"), help=argparse.SUPPRESS
    )
    arguments = sys.argv[1:]
    split = arguments.index("--") if "--" in arguments else len(arguments)
    args, options = parser.parse_args(arguments[:split]), arguments[split + 1 :]
    if args.inner:
        target, profile, seed = args.inner
        figures = timed_check(target, profile, int(seed), options)
        print(json.dumps(figures))  # the last line of stdout, after the check's report
        return
    targets = chosen_targets(args.targets)
    columns = ("wall s", "CPU s", "impl CPU s", "share", "compiling s", "steps CPU s")
    columns += ("normspec CPU s", f"floor on {args.cores} cores s", "steps floor s")
    width = max(len(f"{t}@{p}") for t, p in targets) + 2
    print(f"{'':<{width}}" + "".join(f"{c:>{len(c) + 2}}" for c in columns))
    for target, profile in targets:
        f = measured(target, profile, args.seed, options)
        values = (
            f"{f['wall']:.1f}",
            f"{f['cpu']:.1f}",
            f"{f['implementation']:.1f}",
            f"{100 * f['implementation'] / f['cpu']:.0f}%",
            f"{f['compile']:.1f}",
            f"{f['steps']:.1f}",
            f"{f['cpu'] - f['implementation']:.1f}",
            f"{f['implementation'] / args.cores:.1f}",
            f"{f['steps'] / args.cores:.1f}",
        )
        cells = "".join(f"{v:>{len(c) + 2}}" for c, v in zip(columns, values, strict=True))
        print(f"{target + '@' + profile:<{width}}{cells}", flush=True)


if __name__ == "__main__":
    main()
