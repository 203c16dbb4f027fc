"""The default check of every built-in ONNX target, beside the reference adapter's.

    python benchmarks/onnx_speed.py [--repeat N] [--opsets 6,7,9,14,15]

Runs ``normspec check TARGET --profile onnx --seed 0`` as a user does (a fresh process:
imports and model loading included) for ``reference`` (the baseline, in the same run) and
for ``onnx.reference`` and ``onnxruntime`` at each opset, and prints per target the median
wall-clock and CPU seconds (user + system of the process, the honest figure on a machine
other processes share), the exit code and the clauses that failed or erred. The default
check must fit one minute on two cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNTIMES = ("onnx.reference", "onnxruntime")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def check(target: str, folder: Path) -> tuple[float, float, int, list[str]]:
    """Wall and CPU seconds, exit code, and the clauses that did not pass or apply."""
    report = folder / "report.json"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "normspec", "check", target, "--profile", "onnx"]
    command += ["--seed", "0", "--json", str(report)]
    started, cpu = time.perf_counter(), children_cpu()
    code = subprocess.run(command, capture_output=True, check=False).returncode
    wall, used = time.perf_counter() - started, children_cpu() - cpu
    results = json.loads(report.read_text())["results"] if report.exists() else []
    bad = [f"{r['clause']} ({r['outcome']})" for r in results if r["outcome"] in ("fail", "error")]
    return wall, used, code, bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--opsets", default="6,7,9,14,15")
    args = parser.parse_args()
    opsets = [int(o) for o in args.opsets.split(",")]
    targets = ["reference"] + [f"{r}(opset={o})" for r in RUNTIMES for o in opsets]
    print(f"normspec check TARGET --profile onnx --seed 0 (median of {args.repeat})")
    print(f"{'target':<26}{'wall s':>8}{'CPU s':>8}{'exit':>6}  failed or erred")
    with tempfile.TemporaryDirectory() as folder:
        for target in targets:
            runs = [check(target, Path(folder)) for _ in range(args.repeat)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            code, bad = runs[-1][2], runs[-1][3]
            print(f"{target:<26}{wall:>8.1f}{cpu:>8.1f}{code:>6}  {', '.join(bad) or '-'}")


if __name__ == "__main__":
    main()
