"""The float64 reference's own accuracy, measured against a 60-digit mpmath evaluation.

For random inputs in four conditioning classes (well-conditioned; feature means offset by
1e6, 1e8 and 1e12 times the spread) this prints, per output, the median and the maximum
error in ulps of the output's natural scale (defined in tests/reference/bn_bounds.py and in
batchnorm.md, "Reference accuracy") and the largest ratio of the error to the bound of the
spec's accuracy clause. Ranks 2 to 5, any feature axis, n values per feature from 2 to
``--max-n``.

    .venv/bin/python benchmarks/reference_accuracy.py [--cases 200] [--max-n 256] [--seed 0]
        [--large 10]   # also n = 2^12..2^15 per feature (the blocked summation path)
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reference"))

from bn_measure import KINDS, Case, measure

CLASSES = {"well": None, "1e6": 1e6, "1e8": 1e8, "1e12": 1e12}


def random_case(rng: np.random.Generator, offset: float | None, max_n: int) -> Case:
    """Rank 2-5, any feature axis, 1-3 features, 2..max_n values per feature."""
    rank = int(rng.integers(2, 6))
    axis = int(rng.integers(-rank, rank))
    features = int(rng.integers(1, 4))
    n = round(math.exp(rng.uniform(math.log(2), math.log(max_n))))
    others = [1] * (rank - 1)
    for i in range(rank - 2):
        others[i] = int(rng.integers(1, 4))
    others[-1] = max(1, -(-n // math.prod(others[:-1])))
    shape = others[:]
    shape.insert(axis % rank, features)
    spread = 10.0 ** rng.uniform(-3, 3, size=features)
    if offset is None:
        center = spread * rng.normal(size=features) * rng.uniform(0, 3)
    else:
        center = spread * offset * rng.choice([-1.0, 1.0], size=features)
    moved = rng.normal(size=(features, math.prod(others))) * spread[:, None] + center[:, None]
    x = np.moveaxis(moved.reshape([features, *others]), 0, axis % rank)
    assert list(x.shape) == shape
    x = np.ascontiguousarray(x)
    affine = rng.random() < 0.8
    gamma = rng.normal(size=features) * 10.0 ** rng.uniform(-1, 1, size=features)
    beta = rng.normal(size=features)
    eps = float(np.median(spread) ** 2 * 10.0 ** rng.uniform(-8, 0))
    return Case(
        x=x,
        axis=axis,
        gamma=gamma if affine else None,
        beta=beta if affine else None,
        eps=eps,
        dy=rng.normal(size=x.shape),
        running_mean=center + spread * rng.normal(size=features),
        running_var=spread**2 * rng.uniform(0.5, 2, size=features),
        steps=int(rng.choice([0, 1, 10])),
        rate=[None, 0.1, 0.01, 1.0][int(rng.integers(0, 4))],
        estimator=str(rng.choice(["biased", "unbiased"])),
    )


def large_case(rng: np.random.Generator, offset: float | None, n: int) -> Case:
    """One or two features of about ``n`` values each, NCHW or NHWC: the blocked summation."""
    features = int(rng.integers(1, 3))
    last = bool(rng.integers(0, 2))
    side = math.isqrt(n // 8)
    shape = (8, side, side, features) if last else (8, features, side, side)
    axis = 3 if last else 1
    spread = 10.0 ** rng.uniform(-3, 3, size=features)
    center = spread * (rng.normal(size=features) if offset is None else offset)
    broadcast = [features if dim == axis else 1 for dim in range(4)]
    x = rng.normal(size=shape) * spread.reshape(broadcast) + center.reshape(broadcast)
    return Case(
        x=x,
        axis=axis,
        gamma=rng.normal(size=features),
        beta=rng.normal(size=features),
        eps=float(np.median(spread) ** 2 * 10.0 ** rng.uniform(-8, 0)),
        dy=rng.normal(size=shape),
        running_mean=center,
        running_var=spread**2,
        steps=3,
        rate=0.1,
        estimator="unbiased",
    )


def report(label: str, cases: list[Case], seconds_from: float) -> None:
    ulps: dict[str, list[float]] = {kind: [] for kind in KINDS}
    ratios: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    for case in cases:
        for kind, tally in measure(case).items():
            ulps[kind].extend(tally.ulps)
            ratios[kind] = max(ratios[kind], *tally.ratios, 0.0)
    print(f"\n== {label} ({time.perf_counter() - seconds_from:.0f} s)")
    print(f"{'output':<14}{'values':>8}{'median':>9}{'p99':>9}{'max':>9}{'spec':>10}")
    for kind in KINDS:
        values = ulps[kind]
        if values:
            p99 = float(np.quantile(values, 0.99))
            print(
                f"{kind:<14}{len(values):>8}{statistics.median(values):>9.2f}{p99:>9.2f}"
                f"{max(values):>9.2f}{ratios[kind]:>10.2e}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="random cases per class")
    parser.add_argument("--max-n", type=int, default=256, help="largest n per feature")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--large", type=int, default=0, help="cases per class with n = 2^12..2^15 (slow)"
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print(
        f"float64 reference vs mpmath (60 digits): {args.cases} cases per class, "
        f"n = 2..{args.max_n} values per feature, ranks 2-5"
    )
    print("errors in ulps of each output's natural scale; 'spec' = max error / clause bound")
    for name, offset in CLASSES.items():
        start = time.perf_counter()
        cases = [random_case(rng, offset, args.max_n) for _ in range(args.cases)]
        label = "well-conditioned" if offset is None else f"mean offset {name} x spread"
        report(label, cases, start)
    if args.large:
        for name in ("well", "1e8"):
            start = time.perf_counter()
            cases = [
                large_case(rng, CLASSES[name], int(rng.integers(2**12 + 8 * 25, 2**15)))
                for _ in range(args.large)
            ]
            label = f"n = 2^12..2^15 (blocked summation), {name}"
            report(label, cases, start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
