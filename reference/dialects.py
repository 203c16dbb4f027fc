"""Dialects: the parameters on which real libraries legitimately differ (spec: dialects.md).

A :class:`Dialect` is a set of values for those parameters; a *profile* is a named dialect
that an implementation claims and is checked under. A dialect is a parameter, never a failure.

Profiles are data: the built-in ones (:data:`PROFILES`) are the files of
``normspec/reference/profiles``, and a user's own is a file of the same format
(:mod:`normspec.reference.profile_files`). :func:`profile` resolves what a user names,
a built-in name or a file's path, for every command, the report and the pytest plugin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from normspec.reference._arrays import check_rate
from normspec.reference.family_dialect import CANONICAL, FamilyDialect
from normspec.reference.ghost import GhostDialect
from normspec.reference.profile_files import (
    MOMENTUM_DOMAINS,
    ProfileFileError,
    dialect_fields,
    is_profile_path,
    profile_document,
    read_document,
    render_json,
    render_toml,
    within_domain,
)
from normspec.reference.renorm import RenormConfig, RenormDialect
from normspec.reference.running import VarianceEstimator
from normspec.reference.schedules import (
    PAPER_SCHEDULE,
    ConstantSchedule,
    RenormBounds,
    Schedule,
)
from normspec.reference.state import RUNNING_AVERAGES, RunningAverage

#: ``rate``: the library's momentum is alpha itself (PyTorch);
#: ``decay``: the library's momentum is 1 - alpha (Keras, Flax).
UpdateRateConvention = Literal["rate", "decay"]

#: The built-in profiles, in the order reports and ``normspec identify`` list them: each
#: is the file ``profiles/NAME.toml`` of this package.
BUILTIN_NAMES: tuple[str, ...] = (
    "paper",
    "torch",
    "keras",
    "flax",
    "tf_keras",
    "tf_keras_fused",
    "haiku",
    "equinox_batch",
    "onnx",
)


@dataclass(frozen=True)
class Dialect:
    """The dialect parameters of the BN chapter (dialect.update_rate, dialect.running_variance,
    dialect.cumulative_average, dialect.default_eps, dialect.running_average,
    dialect.momentum_domain), with the renorm, ghost and family ones.

    ``source`` is the profile file a user's profile was read from (``None`` for a built-in
    one): reports name the profile and say where it came from.
    """

    name: str
    description: str
    update_rate: UpdateRateConvention
    running_variance: VarianceEstimator
    cumulative_average: bool
    default_eps: float
    default_momentum: float
    #: The renorm dialect parameters (renorm.md, dialects.md); ``None``: no batch renorm.
    renorm: RenormDialect | None = None
    #: The ghost-batch dialect parameters (ghost.md, dialects.md); ``None``: no ghost batches.
    ghost: GhostDialect | None = None
    #: What the running statistics stand for: ``plain`` averages, or ``zero_debiased``
    #: hidden averages that inference reads divided by ``1 - (1 - alpha)^t``.
    running_average: RunningAverage = "plain"
    #: The values the library's momentum argument may take, in its own convention: the
    #: value clauses draw only these, bn.params.invalid the others.
    momentum_domain: str = "[0, 1]"
    #: The normalization family's dialects (dialects.md: family.*), one per layer kind the
    #: library has; a kind left out is checked under the specification's own dialect.
    family: tuple[FamilyDialect, ...] = ()
    source: str | None = None

    def __post_init__(self) -> None:
        if self.running_average not in RUNNING_AVERAGES:
            raise ValueError(
                f"running_average must be one of {RUNNING_AVERAGES}, got {self.running_average!r}"
            )
        if self.momentum_domain not in MOMENTUM_DOMAINS:
            raise ValueError(
                f"momentum_domain must be one of {MOMENTUM_DOMAINS}, got {self.momentum_domain!r}"
            )

    @property
    def label(self) -> str:
        """The profile as reports name it: its name, and the file it came from."""
        return self.name if self.source is None else f"{self.name} (profile file {self.source})"

    def family_dialect(self, kind: str) -> FamilyDialect:
        """The dialect of the family layer ``kind`` (``layernorm``, ``rmsnorm``, ...): the
        profile's, else the specification's own (``w``, eps inside the root)."""
        for found in self.family:
            if found.kind == kind:
                return found
        return CANONICAL.get(kind, FamilyDialect(kind, default_eps=1e-5))

    def allows_momentum(self, momentum: float) -> bool:
        """Whether the library's momentum ``momentum`` lies in the dialect's domain."""
        return within_domain(momentum, self.momentum_domain)

    def allows_rate(self, rate: float) -> bool:
        """Whether the canonical alpha ``rate`` is a momentum the dialect allows (the
        momentum the library receives, ``1 - alpha`` rounded, under ``decay``)."""
        return 0.0 <= rate <= 1.0 and self.allows_momentum(self._momentum(rate))

    def excluded_momenta(self) -> tuple[float, ...]:
        """The ends of [0, 1] the momentum domain leaves out (bn.params.invalid)."""
        return tuple(m for m in (0.0, 1.0) if not self.allows_momentum(m))

    def _momentum(self, rate: float) -> float:
        return rate if self.update_rate == "rate" else 1.0 - rate

    def rate_from_momentum(self, momentum: float | None) -> float | None:
        """The canonical alpha for a library momentum (``None``: cumulative average); a
        momentum outside the dialect's domain is a ``ValueError`` (bn.params.invalid)."""
        if momentum is None:
            if not self.cumulative_average:
                raise ValueError(f"profile {self.name!r} has no cumulative-average mode")
            return None
        value = check_rate(momentum)
        if not self.allows_momentum(value):
            raise ValueError(
                f"momentum must lie in {self.momentum_domain} (profile {self.name!r}), "
                f"got {momentum!r}"
            )
        return self._momentum(value)

    def momentum_from_rate(self, rate: float | None) -> float | None:
        """The library momentum that means the canonical alpha ``rate``."""
        if rate is None:
            return self.rate_from_momentum(None)
        return self._momentum(check_rate(rate))

    def document(self) -> dict[str, Any]:
        """The profile as a document of the profile-file format."""
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        return profile_document(values)

    def to_toml(self, *, header: str = "", notes: Mapping[str, str] | None = None) -> str:
        """The profile as a TOML profile file (``notes``: a comment per ``part.key``)."""
        return render_toml(self.document(), header=header, notes=notes)

    def to_json(self) -> str:
        """The profile as a JSON profile file."""
        return render_json(self.document())


class ProfileError(KeyError):
    """An unknown profile name, or a profile file that cannot be read or is invalid: one
    line naming the problem (a usage error). A ``KeyError``, as an unknown name has been."""

    def __str__(self) -> str:
        return str(self.args[0])


def parse_profile(document: Mapping[str, Any], source: str, *, builtin: bool = False) -> Dialect:
    """The dialect a parsed profile document describes; ``ProfileFileError`` otherwise."""
    reserved = frozenset() if builtin else frozenset(BUILTIN_NAMES)
    found = dialect_fields(document, source, reserved=reserved)
    return Dialect(**found, source=None if builtin else source)


def _load_builtin_profiles() -> dict[str, Dialect]:
    folder = resources.files("normspec.reference").joinpath("profiles")
    loaded = {}
    for name in BUILTIN_NAMES:
        entry = folder.joinpath(f"{name}.toml")
        with resources.as_file(entry) as path:
            dialect = parse_profile(read_document(path), f"{name}.toml", builtin=True)
        if dialect.name != name:
            raise ProfileFileError(f"profile file {name}.toml: name: must be {name!r}")
        loaded[name] = dialect
    return loaded


#: The built-in profiles by name, read from the package's profile files.
PROFILES: dict[str, Dialect] = _load_builtin_profiles()

_FILES: dict[tuple[str, int, int], Dialect] = {}


def load_profile_file(path: str | os.PathLike[str]) -> Dialect:
    """A user's profile file (TOML, or JSON for ``*.json``), read once per version of the
    file; ``ProfileError`` with one line naming the file, the key and the problem."""
    given = os.fspath(path)
    location = Path(given)
    try:
        status = location.stat()
        key = (str(location.resolve()), status.st_mtime_ns, status.st_size)
    except OSError as problem:
        reason = problem.strerror or str(problem)
        raise ProfileError(f"cannot read profile file {given}: {reason}") from None
    if key not in _FILES:
        try:
            _FILES[key] = parse_profile(read_document(location), given)
        except ProfileFileError as problem:
            raise ProfileError(str(problem)) from None
    return replace(_FILES[key], source=given)


def profile(name: str) -> Dialect:
    """The profile ``name`` names: a built-in one, or a profile file (a path, or a name
    ending in ``.toml`` or ``.json``); ``ProfileError`` (a ``KeyError``) otherwise."""
    if name in PROFILES:
        return PROFILES[name]
    if is_profile_path(name):
        return load_profile_file(name)
    known = ", ".join(sorted(PROFILES))
    raise ProfileError(
        f"unknown profile {name!r} (known: {known}; or a profile file such as ./my-profile.toml)"
    )


def find_profile(name: str) -> Dialect | None:
    """The profile ``name`` names, or ``None`` where :func:`profile` would raise."""
    try:
        return profile(name)
    except ProfileError:
        return None


def renorm_config(
    dialect: Dialect | str,
    num_features: int,
    *,
    momentum: float | None = None,
    renorm_momentum: float | None = None,
    eps: float | None = None,
    schedule: Schedule | None = None,
    clipping: Mapping[str, float] | None = None,
    feature_axis: int = 1,
) -> RenormConfig:
    """The :class:`RenormConfig` of a library layer given its own arguments.

    ``momentum`` and ``renorm_momentum`` are in the library's convention (its
    ``update_rate``); left out, the profile's defaults. The bounds are ``schedule``, or a
    Keras-style ``clipping`` dict (``rmin``, ``rmax``, ``dmax``; a missing key: no
    clipping), or by default the paper's schedule for a ramping dialect and no clipping for
    one that takes independent bounds.
    """
    chosen = profile(dialect) if isinstance(dialect, str) else dialect
    if chosen.renorm is None:
        raise ValueError(f"profile {chosen.name!r} has no batch renormalization")
    renorm = chosen.renorm
    if schedule is not None and clipping is not None:
        raise ValueError("give the bounds as schedule or as clipping, not both")
    if schedule is None:
        if clipping is not None or renorm.clipping == "independent":
            schedule = ConstantSchedule(RenormBounds.from_keras(clipping))
        elif renorm.warmup == "ramp":
            schedule = PAPER_SCHEDULE
        else:
            raise ValueError(f"profile {chosen.name!r} needs an explicit schedule")
    rate = chosen.rate_from_momentum(chosen.default_momentum if momentum is None else momentum)
    if rate is None:  # pragma: no cover - a momentum given is never None here
        raise ValueError("renorm needs a fixed update rate")
    correction_rate: float | None = None
    if renorm.statistics == "separate":
        given = renorm_momentum if renorm_momentum is not None else renorm.default_renorm_momentum
        correction_rate = chosen.rate_from_momentum(given)
    elif renorm_momentum is not None:
        raise ValueError(f"profile {chosen.name!r} has no separate renorm_momentum")
    return RenormConfig(
        num_features=num_features,
        schedule=schedule,
        feature_axis=feature_axis,
        eps=chosen.default_eps if eps is None else eps,
        rate=rate,
        average=renorm.average,
        statistics=renorm.statistics,
        correction_rate=correction_rate,
        sigma_floor=renorm.sigma_floor,
    )
