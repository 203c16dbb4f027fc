"""An independent high-precision evaluation of the normalization family, for the reference's tests.

Written from the formulas of shared/family.md, not from the reference: per slice, plain sums in
mpmath at 60 significant digits on the float64 inputs as given; the backward both in closed
form and as a finite difference of the forward at 80 digits (which checks the closed form).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mpmath
import numpy as np

DPS = 60
MPF = mpmath.mpf


@dataclass
class Slice:
    """One slice's forward: its values, mean (0 uncentered), variance or mean square, s, xhat."""

    x: list[mpmath.mpf]
    mean: mpmath.mpf
    var: mpmath.mpf
    s: mpmath.mpf
    xhat: list[mpmath.mpf]


def forward_slice(values: list[float], eps: float, centered: bool) -> Slice:
    with mpmath.workdps(max(DPS, mpmath.mp.dps)):
        x = [MPF(v) for v in values]
        n = len(x)
        mean = mpmath.fsum(x) / n if centered else MPF(0)
        var = mpmath.fsum((v - mean) ** 2 for v in x) / n
        s = 1 / mpmath.sqrt(var + MPF(eps))
        return Slice(x, mean, var, s, [(v - mean) * s for v in x])


def backward_slice(forward: Slice, g: list[float], centered: bool) -> list[mpmath.mpf]:
    """``dx`` for the cotangent ``g`` of ``xhat``: the closed form of the chain rule."""
    with mpmath.workdps(max(DPS, mpmath.mp.dps)):
        n = len(g)
        gs = [MPF(v) for v in g]
        mean_g = mpmath.fsum(gs) / n if centered else MPF(0)
        projection = mpmath.fsum(a * b for a, b in zip(gs, forward.xhat, strict=True)) / n
        return [
            forward.s * (gi - mean_g - xh * projection)
            for gi, xh in zip(gs, forward.xhat, strict=True)
        ]


def difference_slice(
    values: list[float], g: list[float], eps: float, centered: bool
) -> list[mpmath.mpf]:
    """``dx`` as central differences of ``sum(g * xhat)`` at 80 digits, step 1e-30 times the
    slice's scale: an error far below float64's, with no formula of the backward used."""
    with mpmath.workdps(80):
        scale = max(abs(MPF(v)) for v in values) or MPF(1)
        h = scale * MPF(10) ** -30
        gs = [MPF(v) for v in g]

        def loss(x: list[mpmath.mpf]) -> mpmath.mpf:
            n = len(x)
            mean = mpmath.fsum(x) / n if centered else MPF(0)
            var = mpmath.fsum((v - mean) ** 2 for v in x) / n
            s = 1 / mpmath.sqrt(var + MPF(eps))
            return mpmath.fsum(gi * (v - mean) * s for gi, v in zip(gs, x, strict=True))

        base = [MPF(v) for v in values]
        result = []
        for i in range(len(base)):
            up = list(base)
            down = list(base)
            up[i] += h
            down[i] -= h
            result.append((loss(up) - loss(down)) / (2 * h))
        return result


def slices(
    x: np.ndarray, axes: tuple[int, ...]
) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """``x`` as rows of slices (bookkeeping only), and the way back to ``x``'s shape."""
    moved = np.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
    rows = moved.reshape(-1, int(np.prod([x.shape[a] for a in axes])))

    def back(table: np.ndarray) -> np.ndarray:
        return np.moveaxis(
            table.reshape(moved.shape), tuple(range(x.ndim - len(axes), x.ndim)), axes
        )

    return rows, back
