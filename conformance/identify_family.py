"""``normspec identify`` for the normalization family: the dialect of a LayerNorm or RMSNorm,
and the default eps of a GroupNorm or InstanceNorm (spec: dialects.md, "Normalization family
dialect parameters").

Each probe builds the layer through the adapter protocol on one slice whose statistics are
exact, and compares its output with what each value of a parameter predicts:

- ``centering``: ``x = [1, 2, 3, 6]`` normalized about its mean (LayerNorm) or not (RMSNorm),
  with ``w = 1/2`` and either scale;
- ``scale``: with ``w = 1/2`` the output is ``w * xhat`` or ``(1 + w) * xhat``;
- ``eps``: ``x = [1/2, -1/2, 1/2, -1/2]`` with eps 1/4: ``x / sqrt(ms + eps)`` is ``0.707``,
  ``x / (sqrt(ms) + eps)`` is ``0.667``;
- ``cast`` (float16): the weight applied before one rounding, or after ``xhat`` is rounded;
- ``default_eps``: where the adapter can build the layer with the library's default eps
  (``build_with_default_eps``), ``x = a * [1, -1, 1, -1]`` gives eps back from the output;
  the same in float64 and float32, or each dtype's machine epsilon. A GroupNorm or
  InstanceNorm layer takes the slice as the spatial values of one channel, in one group.

The findings are ``KIND.PARAMETER`` (``rmsnorm.scale``), one list per kind the implementation
has (:data:`PROBES`), so another kind slots in with its probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from normspec.adapters._family import GROUPED, parameter_shape
from normspec.adapters.protocol import (
    Capabilities,
    DTypeName,
    FamilyConfig,
    Implementation,
    LayerConfig,
    UnsupportedConfig,
)
from normspec.conformance.guard import Guard, ImplementationError
from normspec.conformance.strategies_family import family_config
from normspec.reference import family
from normspec.reference.dialects import Dialect
from normspec.reference.family_dialect import (
    FAMILY_KINDS,
    MACHINE_EPSILON,
    FamilyDialect,
    rms_norm_outside,
)
from normspec.reference.profile_files import FAMILY_KEYS

SLICE = np.array([1.0, 2.0, 3.0, 6.0])  # mean 3, variance 3.5, mean square 12.5
EPS = 1e-3
#: Relative agreement that counts as the same number (the probes' dtype is float64 or float32).
AGREEMENT = 1e-4
_SMALL = 1e-3  # the default-eps probe's amplitude: a^2 = 1e-6


class _Layer:
    """Builds the layer of one kind with given parameters and returns its output."""

    def __init__(self, implementation: Implementation, kind: str, dtype: DTypeName, guard: Guard):
        self.implementation, self.kind, self.dtype, self.guard = implementation, kind, dtype, guard

    def output(
        self,
        x: np.ndarray,
        eps: float,
        weight: float,
        *,
        default_eps: bool = False,
        dtype: str = "",
    ) -> np.ndarray | None:
        chosen: Any = dtype or self.dtype
        config, given = self._config(x, chosen, eps)
        build: Any = self.implementation.build
        if default_eps:
            build = getattr(self.implementation, "build_with_default_eps", None)
            if build is None:
                return None
        try:
            layer = self.guard.call("build", build, config)
            weights = np.full(parameter_shape(config), weight)
            self.guard.call("set_parameters", layer.set_parameters, weights, 0 * weights)
            y = self.guard.call("infer", layer.infer, given)
        except (UnsupportedConfig, ImplementationError):
            return None
        return np.asarray(y, dtype=np.float64).reshape(x.shape)

    def _config(self, x: np.ndarray, dtype: Any, eps: float) -> tuple[LayerConfig, np.ndarray]:
        """The layer of the slice ``x`` and its input: one slice (LayerNorm, RMSNorm), or
        one sample of one channel in one group (GroupNorm, InstanceNorm: ``(1, 1, n)``)."""
        kind: Any = self.kind
        if kind not in GROUPED:
            return family_config(kind, dtype, x.shape, x.shape, eps, affine=True, bias=False), x
        config = LayerConfig(
            num_features=1,
            rank=3,
            feature_axis=1,
            dtype=dtype,
            eps=eps,
            momentum=None,
            affine=True,
            track_running_stats=False,
            family=FamilyConfig(kind, (), bias=True, num_groups=1),
        )
        return config, x.reshape(1, 1, -1)


def _agrees(actual: np.ndarray | None, expected: np.ndarray) -> bool:
    if actual is None or actual.shape != expected.shape or not np.all(np.isfinite(actual)):
        return False
    return bool(np.all(np.abs(actual - expected) <= AGREEMENT * np.maximum(1.0, np.abs(expected))))


def _choose(
    layer: _Layer,
    parameter: str,
    x: np.ndarray,
    eps: float,
    weight: float,
    options: dict[str, Any],
    y: np.ndarray | None = None,
) -> tuple[str | None, list[str]]:
    """The option whose prediction the output (``y``, else computed) agrees with, and the
    evidence."""
    y = layer.output(x, eps, weight) if y is None else y
    if y is None:
        return None, [f"{parameter}: the layer could not be built or called"]
    shown = ", ".join(f"{v:.6g}" for v in y)
    for value, predicted in options.items():
        if _agrees(y, predicted):
            return value, [f"x = {x.tolist()}, eps {eps:g}, w = {weight:g}: y = [{shown}]"]
    return None, [f"x = {x.tolist()}, eps {eps:g}, w = {weight:g}: y = [{shown}] agrees with none"]


def _centering(layer: _Layer, found: dict[str, Any]) -> tuple[str | None, list[str]]:
    """With ``w = 1/2``, so that either scale (``w``, ``1 + w``) is told apart."""
    centered = family.layer_norm(SLICE, (4,), eps=EPS)
    uncentered = family.rms_norm(SLICE, (4,), eps=EPS)
    y = layer.output(SLICE, EPS, 0.5)
    for factor in (0.5, 1.5):
        options = {"centered": factor * centered, "uncentered": factor * uncentered}
        value, evidence = _choose(layer, "centering", SLICE, EPS, 0.5, options, y)
        if value is not None:
            return value, evidence
    return None, evidence


def _scale(layer: _Layer, found: dict[str, Any]) -> tuple[str | None, list[str]]:
    xhat = family.rms_norm(SLICE, (4,), eps=EPS)
    return _choose(layer, "scale", SLICE, EPS, 0.5, {"w": 0.5 * xhat, "1 + w": 1.5 * xhat})


def _offset(found: dict[str, Any]) -> float:
    return 1.0 if found.get("scale") == "1 + w" else 0.0


def _eps(layer: _Layer, found: dict[str, Any]) -> tuple[str | None, list[str]]:
    x, eps = np.array([0.5, -0.5, 0.5, -0.5]), 0.25
    options = {
        "inside_root": family.rms_norm(x, (4,), eps=eps),
        "outside_root": rms_norm_outside(x, (4,), eps=eps),
    }
    return _choose(layer, "eps", x, eps, 1.0 - _offset(found), options)


def _default_eps(layer: _Layer, found: dict[str, Any]) -> tuple[str | None, list[str]]:
    x = _SMALL * np.array([1.0, -1.0, 1.0, -1.0])
    outside = found.get("eps") == "outside_root"
    measured: dict[str, float] = {}
    for dtype in ("float64", "float32"):
        if dtype not in layer.implementation.capabilities().dtypes:
            continue  # (ONNX InstanceNormalization on onnxruntime takes no float64)
        y = layer.output(x, EPS, 1.0 - _offset(found), default_eps=True, dtype=dtype)
        if y is None or not np.all(np.isfinite(y)) or y[0] <= 0:
            break
        # inside: y = a / sqrt(a^2 + eps); outside: y = a / (a + eps)
        measured[dtype] = _SMALL / y[0] - _SMALL if outside else _SMALL**2 * (1 / y[0] ** 2 - 1)
    if not measured:
        return None, ["not measured: the adapter cannot build the layer with its default eps"]
    evidence = [f"x = {_SMALL:g} * [1, -1, 1, -1], {d}: eps = {v:.4g}" for d, v in measured.items()]
    machine = {"float64": 2.0**-52, "float32": 2.0**-23}
    if len(measured) == 2 and all(
        math.isclose(measured[d], machine[d], rel_tol=0.05) for d in measured
    ):
        return MACHINE_EPSILON, evidence
    rounded = float(f"{next(iter(measured.values())):.3g}")
    return f"{rounded:g}", evidence


#: The cast probe's slice: 64 values exact in float16, whose normalized values the weight
#: rounds differently with one rounding and with two.
CAST_SLICE = np.round(np.sin(np.arange(1, 65) * 0.7) * 64) / 8
CAST_WEIGHT = 0.7001953125  # float16(0.7)


def _cast(layer: _Layer, found: dict[str, Any]) -> tuple[str | None, list[str]]:
    """In float16: ``(c + w) * xhat`` rounded once (``after_weight``), or ``xhat`` rounded
    and then multiplied in float16 (``before_weight``); decided where the two differ."""
    if "float16" not in layer.implementation.capabilities().dtypes:
        return None, ["not measured: the layer takes no float16 input"]
    x, factor = CAST_SLICE, _offset(found) + CAST_WEIGHT
    xhat = family.rms_norm(x, (x.size,), eps=EPS)
    options = {
        "after_weight": np.float16(xhat * factor).astype(np.float64),
        "before_weight": (np.float16(xhat) * np.float16(factor)).astype(np.float64),
    }
    y = layer.output(x, EPS, CAST_WEIGHT, dtype="float16")
    if y is None or y.shape != xhat.shape:
        return None, ["cast: the layer could not be built or called in float16"]
    differ = options["after_weight"] != options["before_weight"]
    agree = {name: int(np.sum(y[differ] == value[differ])) for name, value in options.items()}
    evidence = [
        f"float16, {x.size} values, w = {CAST_WEIGHT:g}: the two casts differ at "
        f"{int(differ.sum())}; agrees with " + ", ".join(f"{k} at {v}" for k, v in agree.items())
    ]
    best = max(agree, key=lambda name: agree[name])
    others = [v for name, v in agree.items() if name != best]
    if agree[best] >= 0.9 * differ.sum() > max(others, default=0):
        return best, evidence
    return None, evidence


#: The probes of each kind, in order (a later probe reads the earlier findings).
PROBES: dict[str, tuple[tuple[str, Callable[[_Layer, dict[str, Any]], Any]], ...]] = {
    "layernorm": (("centering", _centering), ("default_eps", _default_eps)),
    "rmsnorm": (
        ("centering", _centering),
        ("scale", _scale),
        ("eps", _eps),
        ("default_eps", _default_eps),
        ("cast", _cast),
    ),
    # one group (instance) of one channel: the slice as a sample's spatial values
    "groupnorm": (("default_eps", _default_eps),),
    "instancenorm": (("default_eps", _default_eps),),
}


def family_kinds(capabilities: Capabilities) -> list[str]:
    """The family layer kinds an implementation declares (those :data:`PROBES` has)."""
    return [kind for kind in PROBES if getattr(capabilities, kind, False)]


def probe_family(
    implementation: Implementation, capabilities: Capabilities, dtype: DTypeName, guard: Guard
) -> list[tuple[str, str | None, list[str]]]:
    """``(KIND.PARAMETER, value, evidence)`` for every probe of every kind it has."""
    findings = []
    for kind in family_kinds(capabilities):
        layer = _Layer(implementation, kind, dtype, guard)
        found: dict[str, Any] = {}
        for parameter, probe in PROBES.get(kind, ()):
            value, evidence = probe(layer, found)
            found[parameter] = value
            findings.append((f"{kind}.{parameter}", value, evidence))
    return findings


def _same(parameter: str, measured: str, dialect: FamilyDialect) -> bool:
    if parameter == "centering":
        return measured == ("uncentered" if dialect.kind == "rmsnorm" else "centered")
    expected = getattr(dialect, parameter)
    if parameter == "default_eps" and MACHINE_EPSILON not in (measured, expected):
        return math.isclose(float(measured), float(expected), rel_tol=0.02)
    return bool(measured == expected)


def family_differences(values: dict[str, str | None], dialect: Dialect) -> list[str]:
    """The family findings (``KIND.PARAMETER``) a profile disagrees with (a profile without
    a kind's table: the specification's own dialect of it, as the checks use)."""
    differs = []
    for key, value in values.items():
        kind, _, parameter = key.partition(".")
        known = kind in FAMILY_KINDS and value is not None
        if known and not _same(parameter, str(value), dialect.family_dialect(kind)):
            differs.append(key)
    return differs


def measured_family(
    values: dict[str, str | None], base: Dialect, notes: dict[str, str]
) -> tuple[FamilyDialect, ...]:
    """The profile's family tables: the base profile's, with what was measured."""
    tables = []
    for kind in FAMILY_KINDS:
        has = any(key.startswith(f"{kind}.") for key in values)
        if not has and all(found.kind != kind for found in base.family):
            continue
        chosen = base.family_dialect(kind)
        for key in FAMILY_KEYS[kind] if has else ():
            value = values.get(f"{kind}.{key}")
            if value is None:
                notes[f"{kind}.{key}"] = f"not measured: {base.name}'s"
                continue
            number = key == "default_eps" and value != MACHINE_EPSILON
            measured: dict[str, Any] = {key: float(value) if number else value}
            chosen = replace(chosen, **measured)
            notes[f"{kind}.{key}"] = "measured"
        tables.append(chosen)
    return tuple(tables)
