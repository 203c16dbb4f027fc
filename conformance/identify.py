"""``normspec identify``: which dialect an implementation follows, from probes with known numbers.

Each probe drives the implementation through the adapter protocol with inputs whose
statistics are exact in every dtype, and compares what it does with what each value of a
dialect parameter predicts (spec: dialects.md):

- ``update_rate``: one training step with momentum ``m = 0.25`` from a running mean of 0:
  the running mean is ``m * mu_B`` (``rate``) or ``(1 - m) * mu_B`` (``decay``);
- ``running_variance``: from a running variance of 1, the rate found above gives the batch
  variance that entered the update: the biased ``var_B`` or the unbiased ``n/(n-1) var_B``;
- ``cumulative_average``: ``momentum=None`` over two steps gives the plain average of the
  two batch means, when the implementation offers it;
- for a renorm layer, which moving spreads (a standard deviation or a variance, one set or
  two) the adapter can express, and whether one step moves the spread as that says.

The profiles whose parameters agree are the ones to check it under.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normspec.adapters.protocol import (
    ALL_DTYPES,
    Capabilities,
    DTypeName,
    Implementation,
    LayerConfig,
    UnsupportedConfig,
)
from normspec.conformance.guard import Guard, ImplementationError
from normspec.conformance.results import plain_versions
from normspec.reference import RunningStatistics
from normspec.reference.dialects import PROFILES, Dialect, renorm_config
from normspec.reference.renorm import RenormStatistics

MOMENTUM = 0.25
EPS = 1e-3
#: Per feature: four values with exact mean and variance in every dtype.
FEATURES = (
    (1.0, 2.0, 4.0, 7.0),  # mean 3.5, biased variance 5.25, unbiased 7
    (-2.0, 0.0, 0.0, 6.0),  # mean 1, biased variance 9, unbiased 12
)
#: Relative agreement that counts as "the same number", per dtype.
TOLERANCE: dict[str, float] = {
    "float64": 1e-9,
    "float32": 1e-5,
    "float16": 4e-3,
    "bfloat16": 3e-2,
}


@dataclass
class Finding:
    """What one probe found: a parameter, the value it has (``None``: undetermined), why."""

    parameter: str
    value: str | None
    evidence: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"parameter": self.parameter, "value": self.value, "evidence": self.evidence}


@dataclass
class Identification:
    """The findings, and the profiles they agree with (best first)."""

    target: str
    implementation: str
    versions: dict[str, str]
    setup: str
    findings: list[Finding]
    profiles: list[str]
    closest: list[tuple[str, list[str]]]

    def value(self, parameter: str) -> str | None:
        return next((f.value for f in self.findings if f.parameter == parameter), None)

    @property
    def recommended(self) -> str | None:
        return self.profiles[0] if self.profiles else None

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "implementation": self.implementation,
            "versions": self.versions,
            "setup": self.setup,
            "findings": [f.to_json() for f in self.findings],
            "matching_profiles": self.profiles,
            "recommended_profile": self.recommended,
            "closest_profiles": [{"profile": p, "differs_in": d} for p, d in self.closest],
        }

    def render(self) -> str:
        versions = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        lines = [
            f"normspec identify {self.target}",
            f"  implementation: {self.implementation}" + (f" ({versions})" if versions else ""),
            f"  probed with {self.setup}",
        ]
        for finding in self.findings:
            lines.append(f"  {finding.parameter}: {finding.value or 'undetermined'}")
            lines += [f"      {line}" for line in finding.evidence]
        if self.profiles:
            lines.append(f"matching profiles: {', '.join(self.profiles)}")
            lines.append(
                f"check it with: normspec check {self.target} --profile {self.recommended}"
            )
        else:
            closest = "; ".join(f"{p} (differs in {', '.join(d)})" for p, d in self.closest)
            lines.append(f"no profile matches; the closest: {closest or 'none'}")
            lines.append(
                "a dialect no profile has is a deviation: check it under the closest profile "
                "and declare the clauses it breaks in a deviation file"
            )
        return "\n".join(lines) + "\n"


def _fmt(values: Any) -> str:
    array = np.asarray(values, dtype=np.float64).ravel()
    return "[" + ", ".join(f"{v:.10g}" for v in array) + "]"


def _close(actual: np.ndarray, expected: np.ndarray, dtype: str) -> bool:
    tolerance = TOLERANCE.get(dtype, 1e-5)
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape or not np.all(np.isfinite(actual)):
        return False
    return bool(np.all(np.abs(actual - expected) <= tolerance * np.maximum(1.0, np.abs(expected))))


@dataclass
class _Probe:
    implementation: Implementation
    capabilities: Capabilities
    dtype: DTypeName
    rank: int
    feature_axis: int
    guard: Guard

    @property
    def num_features(self) -> int:
        return len(FEATURES)

    def batch(self, shift: float = 0.0) -> np.ndarray:
        """A batch of 4 values per feature (the FEATURES, plus ``shift``)."""
        values = np.array(FEATURES, dtype=np.float64).T + shift  # (4, C)
        spatial = self.rank - 2
        if spatial == 0:
            x = values
        else:
            # batch 2, spatial (2, 1, ...): 4 values per feature
            x = values.reshape(2, 2, self.num_features)  # (N, S, C)
            x = np.moveaxis(x, 2, 1)  # (N, C, S)
            x = x.reshape((2, self.num_features, 2) + (1,) * (spatial - 1))
        if self.feature_axis != 1:
            x = np.moveaxis(x, 1, -1)
        return np.ascontiguousarray(x)

    def config(self, momentum: float | None, **extra: Any) -> LayerConfig:
        return LayerConfig(
            num_features=self.num_features,
            rank=self.rank,
            feature_axis=self.feature_axis,
            dtype=self.dtype,
            eps=EPS,
            momentum=momentum,
            **extra,
        )

    def call(self, operation: str, function: Any, *args: Any) -> Any:
        return self.guard.call(operation, function, *args)


def _batch_stats(shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = np.array(FEATURES, dtype=np.float64) + shift
    n = values.shape[1]
    mean = values.mean(axis=1)
    biased = values.var(axis=1)
    return mean, biased, biased * n / (n - 1)


def _probe_rate_and_variance(probe: _Probe) -> tuple[Finding, Finding]:
    rate_finding = Finding("update_rate", None)
    var_finding = Finding("running_variance", None)
    if not probe.capabilities.training:
        note = probe.capabilities.notes.get("training", "")
        text = (
            "the adapter declares no training mode"
            + (f" ({note})" if note else "")
            + ": there is no step to probe, and the profiles differ only in training"
        )
        rate_finding.evidence.append(text)
        var_finding.evidence.append(text)
        return rate_finding, var_finding
    mean_b, biased, unbiased = _batch_stats()
    try:
        layer = probe.call("build", probe.implementation.build, probe.config(MOMENTUM))
        start = RunningStatistics(np.zeros(probe.num_features), np.ones(probe.num_features), 0)
        probe.call("set_state", layer.set_state, start)
        probe.call("train_step", layer.train_step, probe.batch())
        state = probe.call("state", layer.state)
    except (ImplementationError, UnsupportedConfig) as problem:
        text = f"one training step with momentum {MOMENTUM} failed: {problem}"
        rate_finding.evidence.append(text)
        var_finding.evidence.append(text)
        return rate_finding, var_finding
    if not isinstance(state, RunningStatistics):
        text = f"the layer keeps no running statistics (state {type(state).__name__})"
        rate_finding.evidence.append(text)
        var_finding.evidence.append(text)
        return rate_finding, var_finding
    predictions = {"rate": MOMENTUM * mean_b, "decay": (1 - MOMENTUM) * mean_b}
    rate_finding.evidence.append(
        f"momentum {MOMENTUM}, running mean 0 before, batch mean {_fmt(mean_b)}: running mean "
        f"after one step {_fmt(state.mean)}"
    )
    rate_finding.evidence.append(
        f"alpha = momentum (rate) predicts {_fmt(predictions['rate'])}; alpha = 1 - momentum "
        f"(decay) predicts {_fmt(predictions['decay'])}"
    )
    matches = [k for k, v in predictions.items() if _close(state.mean, v, probe.dtype)]
    rate_finding.value = matches[0] if len(matches) == 1 else None
    if rate_finding.value is None:
        rate_finding.evidence.append("neither prediction agrees")
    n = len(FEATURES[0])
    var_finding.evidence.append(
        f"running variance 1 before, batch variance {_fmt(biased)} biased, {_fmt(unbiased)} "
        f"unbiased (n = {n}): running variance after the step {_fmt(state.var)}"
    )
    rates = (
        {rate_finding.value: MOMENTUM if rate_finding.value == "rate" else 1 - MOMENTUM}
        if rate_finding.value
        else {"rate": MOMENTUM, "decay": 1 - MOMENTUM}
    )
    found: list[str] = []
    for convention, alpha in rates.items():
        for estimator, v in (("biased", biased), ("unbiased", unbiased)):
            expected = 1 + alpha * (v - 1)
            var_finding.evidence.append(
                f"{estimator} with alpha {alpha} predicts {_fmt(expected)}"
                + ("" if rate_finding.value else f" ({convention})")
            )
            if _close(state.var, expected, probe.dtype):
                found.append(estimator)
    var_finding.value = found[0] if len(set(found)) == 1 else None
    if not found:
        var_finding.evidence.append("no prediction agrees")
    return rate_finding, var_finding


def _probe_cumulative(probe: _Probe) -> tuple[Finding, Finding]:
    finding = Finding("cumulative_average", None)
    steps = Finding("step_counter", None)
    if not probe.capabilities.cumulative_average:
        finding.value = "false"
        note = probe.capabilities.notes.get("cumulative_average", "")
        finding.evidence.append(
            "the adapter declares no cumulative-average mode" + (f" ({note})" if note else "")
        )
    else:
        try:
            layer = probe.call("build", probe.implementation.build, probe.config(None))
            probe.call("set_state", layer.set_state, RunningStatistics.initial(probe.num_features))
            probe.call("train_step", layer.train_step, probe.batch())
            probe.call("train_step", layer.train_step, probe.batch(1.0))
            state = probe.call("state", layer.state)
        except (ImplementationError, UnsupportedConfig) as problem:
            finding.evidence.append(f"momentum None: two training steps failed: {problem}")
        else:
            first, _, _ = _batch_stats()
            second, _, _ = _batch_stats(1.0)
            average = (first + second) / 2
            if isinstance(state, RunningStatistics):
                finding.value = "true" if _close(state.mean, average, probe.dtype) else "false"
                finding.evidence.append(
                    f"momentum None, two steps with batch means {_fmt(first)} and "
                    f"{_fmt(second)}: running mean {_fmt(state.mean)}; the plain average is "
                    f"{_fmt(average)}"
                )
    if probe.capabilities.step_counter:
        try:
            layer = probe.call("build", probe.implementation.build, probe.config(MOMENTUM))
            probe.call("set_state", layer.set_state, RunningStatistics.initial(probe.num_features))
            probe.call("train_step", layer.train_step, probe.batch())
            probe.call("infer", layer.infer, probe.batch())
            state = probe.call("state", layer.state)
        except (ImplementationError, UnsupportedConfig) as problem:
            steps.evidence.append(f"a training step and an inference call failed: {problem}")
        else:
            count = getattr(state, "steps", None)
            steps.value = "yes" if count == 1 else f"unexpected ({count})"
            steps.evidence.append(
                f"0 before; {count} after one training step and one inference call"
            )
    else:
        steps.value = "no"
        steps.evidence.append("the adapter declares no step counter")
    return finding, steps


_AVERAGES = ("std", "variance_biased", "variance_unbiased")


def _probe_renorm(probe: _Probe, update_rate: str | None) -> Finding:
    finding = Finding("renorm", None)
    if not probe.capabilities.renorm:
        finding.value = "not supported"
        finding.evidence.append("the adapter declares no batch renormalization")
        return finding
    # The library momentum that means alpha = MOMENTUM; with the convention unknown (a
    # renorm-only layer) MOMENTUM itself, and alpha is read off the moving mean.
    momentum = MOMENTUM if update_rate in (None, "rate") else 1 - MOMENTUM
    mean_b, biased, unbiased = _batch_stats()
    targets = {
        "std": np.sqrt(biased + EPS),
        "variance_biased": biased,
        "variance_unbiased": unbiased,
    }
    confirmed: list[str] = []
    for statistics in ("shared", "separate"):
        template = "paper" if statistics == "shared" else "tf_keras"
        for average in _AVERAGES:
            try:
                base = renorm_config(template, probe.num_features, feature_axis=probe.feature_axis)
                renorm = dataclasses.replace(
                    base,
                    eps=EPS,
                    rate=MOMENTUM,
                    average=average,  # type: ignore[arg-type]
                    correction_rate=MOMENTUM if statistics == "separate" else None,
                )
                layer = probe.call(
                    "build", probe.implementation.build, probe.config(momentum, renorm=renorm)
                )
            except (UnsupportedConfig, ImplementationError) as problem:
                cause = problem.__cause__ if isinstance(problem, ImplementationError) else problem
                if isinstance(cause, UnsupportedConfig):
                    finding.evidence.append(
                        f"statistics={statistics}, average={average}: not expressible ({cause})"
                    )
                else:
                    finding.evidence.append(
                        f"statistics={statistics}, average={average}: {problem}"
                    )
                continue
            except ValueError as problem:
                finding.evidence.append(f"statistics={statistics}, average={average}: {problem}")
                continue
            start = RenormStatistics.initial(probe.num_features, separate=statistics == "separate")
            try:
                probe.call("set_state", layer.set_state, start)
                probe.call("train_step", layer.train_step, probe.batch())
                state = probe.call("state", layer.state)
            except ImplementationError as problem:
                finding.evidence.append(
                    f"statistics={statistics}, average={average}: a training step failed: {problem}"
                )
                continue
            if not isinstance(state, RenormStatistics):
                finding.evidence.append(
                    f"statistics={statistics}, average={average}: the state is "
                    f"{type(state).__name__}, not moving statistics"
                )
                continue
            alphas = [
                a for a in (MOMENTUM, 1 - MOMENTUM) if _close(state.mean, a * mean_b, probe.dtype)
            ]
            alpha = alphas[0] if alphas else MOMENTUM
            moved = {k: 1 + alpha * (v - 1) for k, v in targets.items()}
            agree = [k for k, v in moved.items() if _close(state.spread, v, probe.dtype)]
            finding.evidence.append(
                f"statistics={statistics}, average={average}: accepted; moving mean "
                f"{_fmt(state.mean)} (alpha {alpha if alphas else 'unclear'}), moving spread 1 "
                f"before, {_fmt(state.spread)} after one step; std predicts "
                f"{_fmt(moved['std'])}, biased variance {_fmt(moved['variance_biased'])}, "
                f"unbiased variance {_fmt(moved['variance_unbiased'])}"
            )
            if average in agree and alphas:
                confirmed.append(f"{statistics}/{average}")
    finding.value = ", ".join(confirmed) if confirmed else None
    if not confirmed:
        finding.evidence.append("no renorm dialect was both accepted and confirmed by a step")
    return finding


def _choose_setup(capabilities: Capabilities) -> tuple[DTypeName, int, int]:
    supported = [d for d in ALL_DTYPES if d in capabilities.dtypes]
    dtype: DTypeName = supported[0] if supported else "float64"
    rank = min(capabilities.ranks) if capabilities.ranks else 2
    feature_axis = 1 if "first" in capabilities.feature_axes else rank - 1
    return dtype, rank, feature_axis


def match_profiles(
    findings: Sequence[Finding], profiles: dict[str, Dialect] | None = None
) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The profiles the findings agree with, best first, and for none the closest ones."""
    known = profiles or PROFILES
    values = {f.parameter: f.value for f in findings}
    matching: list[tuple[tuple[int, int, int], str]] = []
    distance: list[tuple[int, str, list[str]]] = []
    for order, (name, dialect) in enumerate(known.items()):
        differs = []
        for parameter in ("update_rate", "running_variance"):
            value = values.get(parameter)
            if value is not None and value != getattr(dialect, parameter):
                differs.append(parameter)
        renorm = values.get("renorm")
        has_renorm = bool(renorm) and renorm != "not supported"
        if has_renorm and renorm and dialect.renorm is not None:
            wanted = f"{dialect.renorm.statistics}/{dialect.renorm.average}"
            if wanted not in renorm.split(", "):
                differs.append("renorm")
        # Tie-breaks among matching profiles: one that can check the renorm layer too, then
        # one whose cumulative-average mode agrees (either way the clauses are checkable:
        # a mode the implementation lacks makes its clause not applicable).
        renorm_penalty = int(has_renorm and dialect.renorm is None)
        cumulative = values.get("cumulative_average")
        cumulative_penalty = int(
            cumulative is not None and (cumulative == "true") != dialect.cumulative_average
        )
        if not differs:
            matching.append(((renorm_penalty, cumulative_penalty, order), name))
        distance.append((len(differs), name, differs))
    matching.sort(key=lambda item: item[0])
    closest = [
        (n, d)
        for k, n, d in sorted(distance, key=lambda i: i[0])
        if k == min((x[0] for x in distance), default=0)
    ]
    return [name for _, name in matching], ([] if matching else closest)


def identify(
    implementation: Implementation, target: str, *, timeout: float = 30.0
) -> Identification:
    """Probe ``implementation`` and say which dialect it follows."""
    capabilities = implementation.capabilities()
    dtype, rank, feature_axis = _choose_setup(capabilities)
    probe = _Probe(implementation, capabilities, dtype, rank, feature_axis, Guard(timeout))
    shape = probe.batch().shape
    setup = f"{dtype}, input shape {tuple(shape)} with the feature axis {feature_axis}, eps {EPS}"
    findings: list[Finding] = []
    if capabilities.batchnorm:
        rate, variance = _probe_rate_and_variance(probe)
        cumulative, steps = _probe_cumulative(probe)
        findings += [rate, variance, cumulative, steps]
    renorm = _probe_renorm(probe, findings[0].value if findings else None)
    findings.append(renorm)
    profiles, closest = match_profiles(findings)
    return Identification(
        target=target,
        implementation=implementation.name,
        versions=plain_versions(implementation.versions()),
        setup=setup,
        findings=findings,
        profiles=profiles,
        closest=closest,
    )
