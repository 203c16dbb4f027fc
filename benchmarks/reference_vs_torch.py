"""Time and peak memory of the float64 reference against PyTorch's float64 CPU batch norm.

One training step, forward and backward, on a (32, 64, 112, 112) float64 input (NCHW,
205.5 MB): the reference's ``train_forward`` + ``train_backward`` against
``torch.nn.functional.batch_norm(training=True)`` + autograd ``backward``, in the same run.

Time: the two alternate (reference, torch, reference, ...) after a warm-up, so that both see
the same machine load; the median and the minimum of ``--repeats`` steps are printed.

Memory: each implementation runs once in a fresh subprocess. After the inputs ``x`` and
``dy`` (and gamma, beta) are allocated and written, the kernel's high-water mark of the
resident set (``VmHWM`` in /proc/self/status) is reset to the current resident set
(``echo 5 > /proc/self/clear_refs``); after the step, with its outputs still alive, the
peak memory of the step is ``VmHWM`` minus the resident set before the step. That counts
everything the step allocates (outputs, temporaries, autograd buffers, allocator caches),
not the inputs. Where ``clear_refs`` is not writable, ``ru_maxrss`` minus the resident set
before the step is used instead (an overestimate if loading the libraries peaked higher).
For the reference ``tracemalloc``'s peak (NumPy reports its buffers to it) is printed too.

    .venv/bin/python benchmarks/reference_vs_torch.py [--small] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

FULL = (32, 64, 112, 112)
SMALL = (8, 16, 56, 56)


def inputs(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape) * 3.0 + 1.5
    dy = rng.normal(size=shape)
    gamma = rng.normal(size=shape[1])
    beta = rng.normal(size=shape[1])
    return x, dy, gamma, beta


def reference_step(x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> Any:
    from normspec.reference import train_backward, train_forward

    y, stats = train_forward(x, gamma, beta, eps=1e-5, feature_axis=1)
    grads = train_backward(dy, x, gamma, eps=1e-5, feature_axis=1)
    return y, stats, grads


def torch_step(x: Any, dy: Any, gamma: Any, beta: Any) -> Any:
    import torch

    xt = x.detach().requires_grad_(True)
    g = gamma.detach().requires_grad_(True)
    b = beta.detach().requires_grad_(True)
    y = torch.nn.functional.batch_norm(xt, None, None, g, b, training=True, eps=1e-5)
    y.backward(dy)
    return y, xt.grad, g.grad, b.grad


def _status(field: str) -> int:
    """A ``Vm*`` field of /proc/self/status in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure_memory(kind: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Run in a fresh process: peak memory of one step beyond the allocated inputs."""
    x, dy, gamma, beta = inputs(shape)
    if kind == "torch":
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        args: tuple[Any, ...] = tuple(torch.from_numpy(a) for a in (x, dy, gamma, beta))
        small = tuple(torch.from_numpy(a) for a in inputs((2, shape[1], 4, 4)))
        torch_step(*small)  # load the kernels and thread pool before measuring
        step: Any = torch_step
    else:
        args = (x, dy, gamma, beta)
        reference_step(*inputs((2, shape[1], 4, 4)))
        step = reference_step
    method = "VmHWM after clear_refs"
    before = _status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        method = "ru_maxrss"
    traced = 0
    if kind == "reference":
        tracemalloc.start()
    outputs = step(*args)
    if kind == "reference":
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if method == "ru_maxrss":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    else:
        peak = _status("VmHWM")
    del outputs
    return {"peak": peak - before, "traced": traced, "method": method}


def timings(shape: tuple[int, ...], repeats: int) -> tuple[list[float], list[float], int]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x, dy, gamma, beta = inputs(shape)
    targs = tuple(torch.from_numpy(a) for a in (x, dy, gamma, beta))
    reference_step(x, dy, gamma, beta)
    torch_step(*targs)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = reference_step(x, dy, gamma, beta)
        ours.append(time.perf_counter() - start)
        del out
        start = time.perf_counter()
        out = torch_step(*targs)
        theirs.append(time.perf_counter() - start)
        del out
    return ours, theirs, torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help=f"quick run on {SMALL}")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps of each")
    parser.add_argument("--memory", choices=("reference", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory:
        shape = tuple(int(v) for v in args.shape.split(","))
        print(json.dumps(measure_memory(args.memory, shape)))
        return 0

    import torch

    shape = SMALL if args.small else FULL
    size = int(np.prod(shape)) * 8
    mb = 1e6
    print(f"input x: float64 {shape}, {size / mb:.1f} MB (dy the same)")
    print(
        f"numpy {np.__version__} (single-threaded), torch {torch.__version__} "
        f"({os.cpu_count()} CPUs)"
    )
    ours, theirs, threads = timings(shape, args.repeats)
    print(f"\ntime of forward + backward, {args.repeats} steps each, alternating:")
    print(f"{'':<28}{'median':>10}{'min':>10}")
    print(f"{'reference (numpy)':<28}{statistics.median(ours):>9.3f}s{min(ours):>9.3f}s")
    label = f"torch ({threads} threads)"
    print(f"{label:<28}{statistics.median(theirs):>9.3f}s{min(theirs):>9.3f}s")
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"reference / torch (medians): {ratio:.2f}  (target <= 2)")

    print("\npeak memory of one step beyond the inputs (fresh process each):")
    for kind in ("reference", "torch"):
        run = subprocess.run(
            [sys.executable, __file__, "--memory", kind, "--shape", ",".join(map(str, shape))],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(run.stdout.strip().splitlines()[-1])
        peak = result["peak"]
        line = f"{kind:<28}{peak / mb:>9.1f} MB = {peak / size:.2f} x input  [{result['method']}]"
        if kind == "reference":
            line += f"; tracemalloc peak {result['traced'] / mb:.1f} MB"
        line += f"; with x and dy: {(peak + 2 * size) / size:.2f} x input"
        print(line)
    print("(target for the reference: <= 4 x input; the outputs y and dx alone are 2 x input)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
