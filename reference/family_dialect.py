"""The normalization family's dialect parameters, and the RMSNorm forms they select
(spec: dialects.md, "The normalization family"; layernorm.md, "Dialects").

A profile gives, per layer kind it describes, a :class:`FamilyDialect`: the default eps, and
for RMSNorm the scale (``w`` or Gemma's ``1 + w``), where eps sits (inside the root, or
outside it as in the RMSNorm authors' own code) and where the result is cast. The forms
with eps outside the root are evaluated here in float64 (:func:`rms_norm_outside`,
:func:`rms_norm_outside_backward`); those with eps inside are :mod:`family`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from normspec.reference import family
from normspec.reference._arrays import FloatArray, check_eps
from normspec.reference.batchnorm import Gradients

#: The layer kinds a profile describes, in the order files list them (a table each).
FAMILY_KINDS: tuple[str, ...] = ("layernorm", "rmsnorm", "groupnorm", "instancenorm")
#: The kinds whose table a profile file may leave out (format 1 files written before them):
#: the specification's own default eps, as ``false`` gives.
OPTIONAL_KINDS: frozenset[str] = frozenset({"groupnorm", "instancenorm"})
#: ``w``: the output is ``w * xhat``; ``1 + w``: zero-centred weights (Gemma).
Scale = Literal["w", "1 + w"]
#: ``inside_root``: ``x / sqrt(ms + eps)``; ``outside_root``: ``x / (sqrt(ms) + eps)``.
EpsPlacement = Literal["inside_root", "outside_root"]
#: ``after_weight``: ``(c + w) * xhat`` in float32 at least, one cast to the input dtype;
#: ``before_weight``: ``xhat`` cast to the input dtype, the weight applied in it.
Cast = Literal["after_weight", "before_weight"]
#: ``default_eps`` may name the input dtype's machine epsilon (``torch.nn.RMSNorm``).
MACHINE_EPSILON = "machine_epsilon"
_MACHINE: dict[str, float] = {
    "float64": 2.0**-52,
    "float32": 2.0**-23,
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
}


@dataclass(frozen=True)
class FamilyDialect:
    """One layer kind's dialect parameters (dialects.md: ``family.*``)."""

    kind: str
    default_eps: float | str
    scale: Scale = "w"
    eps: EpsPlacement = "inside_root"
    cast: Cast = "after_weight"

    @property
    def scale_offset(self) -> float:
        """``c`` of ``(c + w) * xhat``."""
        return 1.0 if self.scale == "1 + w" else 0.0

    def default_eps_for(self, dtype: str) -> float:
        """The eps a layer built without one uses for an input of ``dtype``."""
        if self.default_eps == MACHINE_EPSILON:
            return _MACHINE[dtype]
        return float(self.default_eps)


#: The specification's own dialect of each kind (a profile whose table is ``false``).
CANONICAL: dict[str, FamilyDialect] = {
    kind: FamilyDialect(kind, default_eps=1e-5) for kind in FAMILY_KINDS
}


def _rows(x: Any, normalized_shape: Sequence[int]) -> tuple[FloatArray, FloatArray, int]:
    """``x`` as ``(slices, n)`` rows and each row's root mean square (shape ``(slices, 1)``)."""
    array = np.asarray(x, dtype=np.float64)
    n = int(np.prod(normalized_shape, dtype=np.int64))
    axes = tuple(range(array.ndim - len(normalized_shape), array.ndim))
    ms = family.statistics(array, family.Reduction(axes, centered=False)).var
    return array.reshape(-1, n), np.sqrt(ms).reshape(-1, 1), n


def rms_norm_outside(
    x: Any,
    normalized_shape: Sequence[int],
    weight: Any = None,
    bias: Any = None,
    *,
    eps: float,
    scale_offset: float = 0.0,
) -> FloatArray:
    """``(c + w) * x / (sqrt(mean(x^2)) + eps) + b`` (rms.train.output, eps outside the root)."""
    eps = check_eps(eps)
    rows, rms, n = _rows(x, normalized_shape)
    with np.errstate(invalid="ignore"):
        y = rows / (rms + eps) * _factor(weight, scale_offset, n)
    y = y + (0.0 if bias is None else np.asarray(bias, dtype=np.float64).reshape(1, n))
    return np.asarray(y.reshape(np.shape(x)), dtype=np.float64)


def rms_norm_outside_backward(
    dy: Any,
    x: Any,
    normalized_shape: Sequence[int],
    weight: Any = None,
    *,
    eps: float,
    scale_offset: float = 0.0,
) -> Gradients:
    """With ``s = 1 / (r + eps)``, ``r = sqrt(mean(x^2))`` and ``g = (c + w) * dy``:
    ``dx = s * g - x * s^2 * sum(g * x) / (n * r)`` (0 for the second term where ``r = 0``,
    the subgradient of ``r`` there), ``dweight = sum(dy * x * s)``, ``dbias = sum(dy)``."""
    eps = check_eps(eps)
    rows, rms, n = _rows(x, normalized_shape)
    upstream = np.asarray(dy, dtype=np.float64).reshape(rows.shape)
    s = 1.0 / (rms + eps)
    g = upstream * _factor(weight, scale_offset, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        through_r = np.where(
            rms > 0, s * s * np.sum(g * rows, axis=1, keepdims=True) / (n * rms), 0
        )
        dx = s * g - rows * through_r
        xhat = rows * s
    shape = tuple(normalized_shape)
    return Gradients(
        np.asarray(dx.reshape(np.shape(x))),
        np.sum(upstream * xhat, axis=0).reshape(shape),
        np.sum(upstream, axis=0).reshape(shape),
    )


def _factor(weight: Any, scale_offset: float, n: int) -> FloatArray | float:
    if weight is None:
        return 1.0
    return np.asarray(weight, dtype=np.float64).reshape(1, n) + scale_offset


__all__ = [
    "CANONICAL",
    "FAMILY_KINDS",
    "MACHINE_EPSILON",
    "OPTIONAL_KINDS",
    "FamilyDialect",
    "rms_norm_outside",
    "rms_norm_outside_backward",
]
