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
- ``running_average``: a new layer's running variance (1, or the hidden 0 of a zero-debiased
  average), and what inference reads from a state one step old: the running statistics, or
  them divided by ``1 - (1 - alpha)^1 = alpha``;
- ``momentum_domain``: whether a training step with the momenta 0 and 1 is accepted;
- for a renorm layer, which moving spreads (a standard deviation or a variance, one set or
  two) the adapter can express, and whether one step moves the spread as that says;
- for a LayerNorm or RMSNorm, its centering, scale (``w`` or ``1 + w``), where eps sits and
  its default eps (:mod:`identify_family`).

The profiles whose parameters agree are the ones to check it under; where none does,
:func:`measured_profile` is the profile of what was measured, the rest taken from the
closest profile (``normspec identify`` writes it as a profile file).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
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
from normspec.conformance.identify_family import (
    family_differences,
    family_kinds,
    measured_family,
    probe_family,
)
from normspec.conformance.results import plain_versions
from normspec.reference import RunningStatistics
from normspec.reference.dialects import PROFILES, Dialect, renorm_config
from normspec.reference.profile_files import MOMENTUM_DOMAINS, within_domain
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
    #: the profiles matched against, by name (the built-in ones, and a profile file given)
    candidates: dict[str, Dialect] = field(default_factory=dict)

    def value(self, parameter: str) -> str | None:
        return next((f.value for f in self.findings if f.parameter == parameter), None)

    @property
    def recommended(self) -> str | None:
        return self.profiles[0] if self.profiles else None

    def argument(self, name: str) -> str:
        """How ``normspec check --profile`` names the profile ``name`` (a file by its path)."""
        candidate = self.candidates.get(name)
        return name if candidate is None or candidate.source is None else candidate.source

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
                f"check it with: normspec check {self.target} --profile "
                f"{self.argument(self.recommended or '')}"
            )
        else:
            closest = "; ".join(f"{p} (differs in {', '.join(d)})" for p, d in self.closest)
            lines.append(f"no profile matches; the closest: {closest or 'none'}")
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


#: The state one step old the running-average probe sets: exact in every dtype.
_HIDDEN_MEAN = (0.5, -0.25)
_HIDDEN_VAR = (1.0, 0.5)


def _alphas(update_rate: str | None) -> list[float]:
    """The rates alpha the probes' momentum MOMENTUM may mean (both if the convention is
    undetermined)."""
    if update_rate == "rate":
        return [MOMENTUM]
    if update_rate == "decay":
        return [1 - MOMENTUM]
    return [MOMENTUM, 1 - MOMENTUM]


def _probe_running_average(probe: _Probe, update_rate: str | None) -> Finding:
    """A new layer's running variance (1, or 0 for hidden averages), and what inference
    reads from a state one step old: the statistics, or them divided by ``c_1 = alpha``."""
    finding = Finding("running_average", None)
    try:
        fresh = probe.call("build", probe.implementation.build, probe.config(MOMENTUM))
        initial = probe.call("state", fresh.state)
    except (ImplementationError, UnsupportedConfig) as problem:
        finding.evidence.append(f"building a layer failed: {problem}")
        return finding
    if not isinstance(initial, RunningStatistics):
        finding.evidence.append("the layer keeps no running statistics")
        return finding
    starts = {"plain": 1.0, "zero_debiased": 0.0}
    began = [k for k, v in starts.items() if np.all(initial.var == v)]
    finding.evidence.append(
        f"a new layer's running variance {_fmt(initial.var)} (plain averages start from 1, "
        "zero-debiased hidden averages from 0)"
    )
    if not probe.capabilities.step_counter:
        finding.evidence.append("the adapter declares no step counter, which debiasing reads")
        finding.value = "plain" if began == ["plain"] else None
        return finding
    mean, var = np.array(_HIDDEN_MEAN), np.array(_HIDDEN_VAR)
    x = probe.batch()
    try:
        layer = probe.call("build", probe.implementation.build, probe.config(MOMENTUM))
        probe.call("set_state", layer.set_state, RunningStatistics(mean, var, 1))
        y = probe.call("infer", layer.infer, x)
    except (ImplementationError, UnsupportedConfig) as problem:
        finding.evidence.append(f"inference from a state one step old failed: {problem}")
        return finding
    reads = {"plain": [(mean, var)]}
    reads["zero_debiased"] = [(mean / a, var / a) for a in _alphas(update_rate)]
    axis = probe.feature_axis
    shape = [1] * x.ndim
    shape[axis] = probe.num_features
    read = []
    for kind, options in reads.items():
        for m, v in options:
            expected = (x - m.reshape(shape)) / np.sqrt(v.reshape(shape) + EPS)
            if _close(np.asarray(y), expected, probe.dtype):
                read.append(kind)
    finding.evidence.append(
        f"hidden mean {_fmt(mean)}, variance {_fmt(var)}, one step: inference "
        + (
            f"reads them {'divided by alpha' if read[0] == 'zero_debiased' else 'as they are'}"
            if read
            else "reads neither them nor them divided by alpha"
        )
    )
    agreed = [k for k in read if k in began]
    finding.value = agreed[0] if len(set(agreed)) == 1 else None
    if read and not agreed:
        finding.evidence.append("the initial state and what inference reads disagree")
    return finding


def _probe_momentum_domain(probe: _Probe) -> Finding:
    """Whether a training step with the momentum 0, and with 1, is accepted."""
    finding = Finding("momentum_domain", None)
    excluded = []
    for momentum in (0.0, 1.0):
        try:
            layer = probe.call("build", probe.implementation.build, probe.config(momentum))
            probe.call("train_step", layer.train_step, probe.batch())
        except (ImplementationError, UnsupportedConfig) as problem:
            excluded.append(momentum)
            finding.evidence.append(f"momentum {momentum:g}: rejected ({problem})")
        else:
            finding.evidence.append(f"momentum {momentum:g}: accepted")
    low = "(" if 0.0 in excluded else "["
    high = ")" if 1.0 in excluded else "]"
    finding.value = f"{low}0, 1{high}"
    return finding


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
    refused = probe.capabilities.refused_dtypes.get("renorm", {})
    if probe.dtype in refused:  # in a dtype its renorm layers work in (probed per chapter)
        usable = [d for d in ALL_DTYPES if d in probe.capabilities.dtypes and d not in refused]
        probe = dataclasses.replace(probe, dtype=usable[0]) if usable else probe
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


def _rejects_what_it_allows(measured: str | None, dialect: Dialect) -> bool:
    """Whether the implementation rejects a momentum the profile's value clauses draw."""
    if measured is None:
        return False
    return any(dialect.allows_momentum(m) and not within_domain(m, measured) for m in (0.0, 1.0))


def match_profiles(
    findings: Sequence[Finding], profiles: Mapping[str, Dialect] | None = None
) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The profiles the findings agree with, best first, and for none the closest ones."""
    known = profiles or PROFILES
    values = {f.parameter: f.value for f in findings}
    matching: list[tuple[tuple[int, int, int], str]] = []
    distance: list[tuple[int, str, list[str]]] = []
    for order, (name, dialect) in enumerate(known.items()):
        differs = []
        for parameter in ("update_rate", "running_variance", "running_average"):
            value = values.get(parameter)
            if value is not None and value != getattr(dialect, parameter):
                differs.append(parameter)
        if _rejects_what_it_allows(values.get("momentum_domain"), dialect):
            differs.append("momentum_domain")
        differs += family_differences(values, dialect)
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
    implementation: Implementation,
    target: str,
    *,
    timeout: float = 30.0,
    also: Dialect | None = None,
) -> Identification:
    """Probe ``implementation`` and say which dialect it follows; ``also``: a profile (a
    user's file) to match against besides the built-in ones."""
    capabilities = implementation.capabilities()
    dtype, rank, feature_axis = _choose_setup(capabilities)
    probe = _Probe(implementation, capabilities, dtype, rank, feature_axis, Guard(timeout))
    shape = probe.batch().shape
    setup = f"{dtype}, input shape {tuple(shape)} with the feature axis {feature_axis}, eps {EPS}"
    findings: list[Finding] = []
    if capabilities.batchnorm:
        rate, variance = _probe_rate_and_variance(probe)
        cumulative, steps = _probe_cumulative(probe)
        average = _probe_running_average(probe, rate.value)
        findings += [rate, variance, cumulative, steps, average, _probe_momentum_domain(probe)]
    renorm = _probe_renorm(probe, findings[0].value if findings else None)
    ghost = Finding("ghost_batches", "supported" if capabilities.ghost_batches else "no")
    ghost.evidence.append("as the adapter declares (not probed)")
    findings += [renorm, ghost]
    if family_kinds(capabilities):
        family_dtype: DTypeName = "float64" if "float64" in capabilities.dtypes else "float32"
        for parameter, value, evidence in probe_family(
            implementation, capabilities, family_dtype, probe.guard
        ):
            findings.append(Finding(parameter, value, evidence))
        if not capabilities.batchnorm:
            setup = f"{family_dtype}, one slice of 4 values (dialects.md: family.*)"
    # The profile the user gave comes first: among equal matches, it is the one to recommend.
    candidates = {also.name: also} if also is not None else {}
    candidates.update((name, d) for name, d in PROFILES.items() if name not in candidates)
    profiles, closest = match_profiles(findings, candidates)
    return Identification(
        target=target,
        implementation=implementation.name,
        versions=plain_versions(implementation.versions()),
        setup=setup,
        findings=findings,
        profiles=profiles,
        closest=closest,
        candidates=candidates,
    )


def profile_name_for(target: str) -> str:
    """A profile name for the dialect of ``target`` (``mylib.layers:BN`` -> ``mylib.layers.BN``)."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", ".", target).strip(".") or "measured"
    return f"{name}.measured" if name in PROFILES else name


def measured_profile(found: Identification, name: str) -> tuple[Dialect, dict[str, str]]:
    """The profile of what ``found`` measured, and a note per ``part.key`` saying where each
    value came from: the findings, or (what the probes do not measure: the defaults, the
    renorm bounds' form, floor and warm-up, the ghost parameters) the closest profile."""
    base_name = found.recommended or (found.closest[0][0] if found.closest else "paper")
    base = found.candidates.get(base_name, PROFILES["paper"])
    measured: dict[str, Any] = {}
    notes: dict[str, str] = {}
    for parameter in ("update_rate", "running_variance", "running_average", "momentum_domain"):
        value = found.value(parameter)
        if value is not None:
            measured[parameter] = value
            notes[f"batchnorm.{parameter}"] = "measured"
        else:
            notes[f"batchnorm.{parameter}"] = f"undetermined: {base.name}'s"
    cumulative = found.value("cumulative_average")
    if cumulative is not None:
        measured["cumulative_average"] = cumulative == "true"
        notes["batchnorm.cumulative_average"] = "measured"
    for key in ("default_eps", "default_momentum"):
        notes[f"batchnorm.{key}"] = f"not measured: {base.name}'s; set the library's default"
    if measured.get("running_average", base.running_average) == "zero_debiased":
        # 1 - (1 - alpha)^t is 0 at alpha = 0: a zero-debiased dialect leaves that rate out
        update_rate = measured.get("update_rate", base.update_rate)
        domain = measured.get("momentum_domain", base.momentum_domain)
        edge = 1 if update_rate == "decay" else 0
        kept = domain[:-1] + ")" if edge else "(" + domain[1:]
        if kept != domain:
            measured["momentum_domain"] = kept
            notes["batchnorm.momentum_domain"] = (
                f"measured {domain}; alpha = 0 left out, where the debias factor is 0"
            )
        measured["cumulative_average"] = False
    dialect = dataclasses.replace(
        base,
        name=name,
        description=f"{found.implementation}: measured by normspec identify {found.target}",
        source=None,
        renorm=_measured_renorm(found, base, measured, notes),
        family=measured_family({f.parameter: f.value for f in found.findings}, base, notes),
        ghost=None if found.value("ghost_batches") != "supported" else base.ghost,
        **measured,
    )
    if dialect.ghost is not None:
        notes.update({f"ghost.{k}": f"not measured: {base.name}'s" for k in ("groups", "running")})
    assert dialect.momentum_domain in MOMENTUM_DOMAINS
    return dialect, notes


#: Where ``normspec identify`` writes the measured profile unless told (the current
#: directory): a file a user can commit.
DEFAULT_PROFILE_FILE = "normspec-profile.toml"


def write_profile_file(found: Identification, path: str, *, overwrite: bool) -> str:
    """Write the measured profile (:func:`measured_profile`) to ``path`` (TOML; JSON for
    ``*.json``), validated by the loader every profile file goes through; return the line
    that says what was written, or why not (an existing file is kept unless ``overwrite``)."""
    from pathlib import Path

    from normspec.conformance.report_json import write_atomically
    from normspec.reference.dialects import parse_profile
    from normspec.reference.profile_files import ProfileFileError

    location = Path(path)
    if location.exists() and not overwrite:
        return (
            f"{path} exists: not overwritten (--write-profile PATH writes the measured profile "
            "elsewhere, or over it)"
        )
    name = profile_name_for(found.target)
    dialect, notes = measured_profile(found, name)
    try:
        parse_profile(dialect.document(), path)
    except ProfileFileError as problem:
        return f"the measured dialect is no valid profile, nothing written: {problem}"
    if location.suffix.lower() == ".json":
        text = dialect.to_json()
    else:
        header = (
            f"The dialect of {found.target} as `normspec identify` measured it: a normspec\n"
            "profile file (spec/dialects.md). Check the values not measured against the\n"
            "library's documentation, commit it, and check the library with\n"
            f"  normspec check {found.target} --profile {path}"
        )
        text = dialect.to_toml(header=header, notes=notes)
    write_atomically(location, text)
    return (
        f"wrote the profile it measured to {path} (profile {name}): check it with: "
        f"normspec check {found.target} --profile {path}"
    )


def _measured_renorm(
    found: Identification, base: Dialect, measured: dict[str, Any], notes: dict[str, str]
) -> Any:
    """The renorm part: the first confirmed ``statistics/average``, the rest from the
    profile of those statistics; none for a layer without renorm (or zero-debiased BN)."""
    confirmed = found.value("renorm")
    if confirmed in (None, "not supported") or measured.get("running_average") == "zero_debiased":
        return None
    statistics, average = confirmed.split(", ")[0].split("/")
    template = PROFILES["paper" if statistics == "shared" else "tf_keras"].renorm
    assert template is not None
    notes.update({"renorm.statistics": "measured", "renorm.average": "measured"})
    for key in ("clipping", "sigma_floor", "warmup", "default_renorm_momentum"):
        notes[f"renorm.{key}"] = "not measured: the profile of these statistics'"
    chosen: dict[str, Any] = {"statistics": statistics, "average": average}
    return dataclasses.replace(template, **chosen)  # RenormDialect validates the values
