"""Profile files: a dialect written as data (spec: dialects.md, "Profile files").

A profile file gives every dialect parameter of the BN, renorm and ghost chapters, in TOML
(or JSON with the same structure, for a name ending in ``.json``)::

    format = 1
    name = "mylib"
    description = "mylib.BatchNorm: decay, biased variance, zero-debiased averages"
    renorm = false                  # or a [renorm] table
    ghost = false                   # or a [ghost] table
    layernorm = false               # or a [layernorm] table: the library has none

    [batchnorm]
    update_rate = "decay"           # rate | decay
    momentum_domain = "[0, 1)"      # [0, 1] | [0, 1) | (0, 1] | (0, 1), in the library's convention
    running_variance = "biased"     # biased | unbiased
    running_average = "zero_debiased"   # plain | zero_debiased
    cumulative_average = false
    default_eps = 1e-5
    default_momentum = 0.99

    [rmsnorm]
    default_eps = 1e-6              # a number, or "machine_epsilon" (of the input's dtype)
    scale = "1 + w"                 # w | 1 + w
    eps = "inside_root"             # inside_root | outside_root
    cast = "after_weight"           # after_weight | before_weight

    [groupnorm]                     # and [instancenorm]: may be left out (false)
    default_eps = 1e-5

The built-in profiles are files of this format shipped in ``normspec/reference/profiles``
and read by the same code. :func:`dialect_fields` validates a parsed document like code: an
unknown key, a missing key or a value outside its domain raises :class:`ProfileFileError`
with one line naming the file, the key and the problem. :func:`render_toml` and
:func:`render_json` write a document back (``normspec identify`` writes the profile it
measured with them).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from normspec.reference.family_dialect import (
    FAMILY_KINDS,
    MACHINE_EPSILON,
    OPTIONAL_KINDS,
    FamilyDialect,
)
from normspec.reference.ghost import GhostDialect
from normspec.reference.renorm import RenormDialect
from normspec.reference.state import RUNNING_AVERAGES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The version of the format this normspec reads and writes (the ``format`` key).
FORMAT = 1
#: The intervals a library's momentum argument may be documented to lie in.
MOMENTUM_DOMAINS = ("[0, 1]", "[0, 1)", "(0, 1]", "(0, 1)")
#: Suffixes that make a profile argument a file rather than a built-in name.
SUFFIXES = (".toml", ".json")
_NAME = re.compile(r"[A-Za-z0-9_.+-]+")

#: The keys of each part of a document, in the order files list them, with what each takes
#: (``str`` values: the choices; ``bool``, ``float``: a boolean or a number).
TOP_KEYS: dict[str, Any] = {
    "format": int,
    "name": str,
    "description": str,
    "batchnorm": "table",
    "renorm": "table",
    "ghost": "table",
    **{kind: "table" for kind in FAMILY_KINDS},
}
BATCHNORM_KEYS: dict[str, Any] = {
    "update_rate": ("rate", "decay"),
    "momentum_domain": MOMENTUM_DOMAINS,
    "running_variance": ("biased", "unbiased"),
    "running_average": RUNNING_AVERAGES,
    "cumulative_average": bool,
    "default_eps": float,
    "default_momentum": float,
}
RENORM_KEYS: dict[str, Any] = {
    "average": ("std", "variance_biased", "variance_unbiased"),
    "statistics": ("shared", "separate"),
    "clipping": ("symmetric", "independent"),
    "sigma_floor": ("none", "sqrt_eps"),
    "warmup": ("ramp", "switch", "none"),
    "default_renorm_momentum": float,
}
#: The keys of each family layer's table (dialects.md: family.*).
FAMILY_KEYS: dict[str, dict[str, Any]] = {
    "layernorm": {"default_eps": "eps"},
    "rmsnorm": {
        "default_eps": "eps",
        "scale": ("w", "1 + w"),
        "eps": ("inside_root", "outside_root"),
        "cast": ("after_weight", "before_weight"),
    },
    "groupnorm": {"default_eps": "eps"},
    "instancenorm": {"default_eps": "eps"},
}
GHOST_KEYS: dict[str, Any] = {
    "groups": ("consecutive", "strided"),
    "running": ("sequential", "averaged"),
}


class ProfileFileError(ValueError):
    """A profile file that cannot be read or is not a valid profile: one line naming the
    file, the key and the problem (a usage error)."""


def is_profile_path(argument: str) -> bool:
    """Whether a profile argument names a file (a path, or a ``.toml``/``.json`` name)."""
    return "/" in argument or "\\" in argument or argument.lower().endswith(SUFFIXES)


def read_document(path: str | Path) -> dict[str, Any]:
    """The parsed document of a profile file (TOML; JSON for ``*.json``)."""
    location = Path(path)
    kind = "JSON" if location.suffix.lower() == ".json" else "TOML"
    try:
        text = location.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as problem:
        reason = getattr(problem, "strerror", None) or str(problem)
        raise ProfileFileError(f"cannot read profile file {path!s}: {reason}") from None
    try:
        document = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except ValueError as problem:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        first = str(problem).splitlines()[0] if str(problem) else type(problem).__name__
        raise ProfileFileError(f"profile file {path!s} is not valid {kind}: {first}") from None
    if not isinstance(document, dict):
        raise ProfileFileError(f"profile file {path!s}: expected a table of keys")
    return document


class _Reader:
    """Reads the keys of one document, each problem one line: ``SOURCE: KEY: problem``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ProfileFileError:
        return ProfileFileError(f"profile file {self.source}: {key}: {problem}")

    def table(
        self, raw: Any, prefix: str, keys: Mapping[str, Any], optional: set[str]
    ) -> dict[str, Any]:
        """The values of a table whose keys are ``keys``; those in ``optional`` may be missing."""
        if not isinstance(raw, dict):
            raise self.fail(prefix.rstrip("."), "must be a table")
        for key in raw:
            if key not in keys:
                known = ", ".join(keys)
                raise self.fail(f"{prefix}{key}", f"unknown key (known: {known})")
        values: dict[str, Any] = {}
        for key, kind in keys.items():
            if key not in raw:
                if key in optional:
                    continue
                raise self.fail(f"{prefix}{key}", f"missing ({self.describe(kind)})")
            values[key] = self.value(f"{prefix}{key}", raw[key], kind)
        return values

    @staticmethod
    def describe(kind: Any) -> str:
        if isinstance(kind, tuple):
            return "one of " + ", ".join(_shown(choice) for choice in kind)
        return _KINDS[kind][0] if kind in _KINDS else "a table, or false"

    def value(self, key: str, value: Any, kind: Any) -> Any:
        if isinstance(kind, tuple):
            if value not in kind:
                raise self.fail(key, f"must be {self.describe(kind)}, got {_shown(value)}")
            return value
        if kind not in _KINDS:
            return value  # a table or false: read by the caller
        name, accepts = _KINDS[kind]
        if not accepts(value):
            raise self.fail(key, f"must be {name}, got {_shown(value)}")
        return (
            float(value) if kind is float or (kind == "eps" and value != MACHINE_EPSILON) else value
        )


#: What a key of each kind accepts, and how a message names it (a boolean is no number).
_KINDS: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
    "eps": (
        f'a positive finite number or "{MACHINE_EPSILON}"',
        lambda v: (
            v == MACHINE_EPSILON
            or (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and math.isfinite(v)
                and v > 0
            )
        ),
    ),
}


def _shown(value: Any) -> str:
    """A value as the file spells it (``true``, ``"rate"``, ``0.5``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def within_domain(momentum: float, domain: str) -> bool:
    """Whether ``momentum`` lies in the interval ``domain`` (one of MOMENTUM_DOMAINS)."""
    low = momentum > 0 if domain.startswith("(") else momentum >= 0
    high = momentum < 1 if domain.endswith(")") else momentum <= 1
    return bool(low and high)


def dialect_fields(
    document: Mapping[str, Any], source: str, *, reserved: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The keyword arguments of :class:`~normspec.reference.dialects.Dialect` a parsed
    profile document gives, validated; ``ProfileFileError`` naming ``source``, the key and
    the problem otherwise. ``reserved``: names a file may not take (the built-in ones')."""
    read = _Reader(source)
    top = read.table(dict(document), "", TOP_KEYS, optional=set(OPTIONAL_KINDS))
    if top["format"] != FORMAT:
        raise read.fail(
            "format",
            f"must be {FORMAT} (the format this normspec reads), got {_shown(top['format'])}",
        )
    name = top["name"]
    if not _NAME.fullmatch(name):
        raise read.fail(
            "name",
            f"must be a word of letters, digits and '_.+-' (it names the profile in reports), got {_shown(name)}",
        )
    if name in reserved:
        raise read.fail(
            "name",
            f"{_shown(name)} is a built-in profile's name; a profile file names its own dialect",
        )
    bn = read.table(top["batchnorm"], "batchnorm.", BATCHNORM_KEYS, optional=set())
    domain = bn["momentum_domain"]
    if not (math.isfinite(bn["default_eps"]) and bn["default_eps"] > 0):
        raise read.fail(
            "batchnorm.default_eps",
            f"must be a positive finite number, got {_shown(bn['default_eps'])}",
        )
    if not within_domain(bn["default_momentum"], domain):
        raise read.fail(
            "batchnorm.default_momentum",
            f"must lie in the momentum domain {domain}, got {_shown(bn['default_momentum'])}",
        )
    renorm = _renorm(read, top["renorm"], domain)
    ghost = _ghost(read, top["ghost"])
    if bn["running_average"] == "zero_debiased":
        _zero_debiased(read, bn, renorm, ghost)
    return {
        "name": name,
        "description": top["description"],
        "update_rate": bn["update_rate"],
        "running_variance": bn["running_variance"],
        "cumulative_average": bn["cumulative_average"],
        "default_eps": bn["default_eps"],
        "default_momentum": bn["default_momentum"],
        "renorm": renorm,
        "ghost": ghost,
        "running_average": bn["running_average"],
        "momentum_domain": domain,
        "family": tuple(
            found
            for kind in FAMILY_KINDS
            if (found := _family(read, kind, top.get(kind, False))) is not None
        ),
    }


def _renorm(read: _Reader, raw: Any, domain: str) -> RenormDialect | None:
    if raw is False:
        return None
    if not isinstance(raw, dict):
        raise read.fail(
            "renorm",
            f"must be a [renorm] table, or false for no batch renormalization, got {_shown(raw)}",
        )
    if domain != MOMENTUM_DOMAINS[0]:
        raise read.fail(
            "renorm",
            f"the renorm chapter takes momentum_domain [0, 1]: a profile whose momentum domain is {domain} has renorm = false",
        )
    values = read.table(raw, "renorm.", RENORM_KEYS, optional={"default_renorm_momentum"})
    separate = values["statistics"] == "separate"
    momentum = values.get("default_renorm_momentum")
    if separate and momentum is None:
        raise read.fail(
            "renorm.default_renorm_momentum", "missing (a number: the statistics are separate)"
        )
    if not separate and momentum is not None:
        raise read.fail(
            "renorm.default_renorm_momentum",
            "only with statistics = 'separate' (one set has no renorm momentum)",
        )
    if momentum is not None and not within_domain(momentum, MOMENTUM_DOMAINS[0]):
        raise read.fail(
            "renorm.default_renorm_momentum", f"must lie in [0, 1], got {_shown(momentum)}"
        )
    return RenormDialect(**values)


def _ghost(read: _Reader, raw: Any) -> GhostDialect | None:
    if raw is False:
        return None
    if not isinstance(raw, dict):
        raise read.fail(
            "ghost", f"must be a [ghost] table, or false for no ghost batches, got {_shown(raw)}"
        )
    return GhostDialect(**read.table(raw, "ghost.", GHOST_KEYS, optional=set()))


def _family(read: _Reader, kind: str, raw: Any) -> FamilyDialect | None:
    if raw is False:
        return None
    if not isinstance(raw, dict):
        raise read.fail(
            kind, f"must be a [{kind}] table, or false for a library without one, got {_shown(raw)}"
        )
    return FamilyDialect(kind, **read.table(raw, f"{kind}.", FAMILY_KEYS[kind], optional=set()))


def _zero_debiased(
    read: _Reader, bn: Mapping[str, Any], renorm: RenormDialect | None, ghost: GhostDialect | None
) -> None:
    """What a zero-debiased running average excludes (bn.infer.output: ``1 - (1 - alpha)^t``)."""
    key = "batchnorm.running_average"
    zero_rate = 1.0 if bn["update_rate"] == "decay" else 0.0
    if within_domain(zero_rate, bn["momentum_domain"]):
        raise read.fail(
            "batchnorm.momentum_domain",
            f"{bn['momentum_domain']} holds momentum {zero_rate:g}, the rate alpha = 0, where a "
            "zero-debiased average divides by 1 - (1 - alpha)^t = 0: exclude it",
        )
    if bn["cumulative_average"]:
        raise read.fail(
            key, "zero_debiased has no cumulative-average mode: cumulative_average = false"
        )
    if renorm is not None or ghost is not None:
        raise read.fail(
            key,
            "zero_debiased is specified for batch normalization only: renorm = false, ghost = false",
        )


def profile_document(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The document of a dialect given by its :func:`dialect_fields` (the inverse)."""
    renorm: RenormDialect | None = fields["renorm"]
    ghost: GhostDialect | None = fields["ghost"]
    renorm_table: dict[str, Any] | bool = False
    if renorm is not None:
        renorm_table = {key: getattr(renorm, key) for key in RENORM_KEYS}
        if renorm_table["default_renorm_momentum"] is None:
            del renorm_table["default_renorm_momentum"]
    return {
        "format": FORMAT,
        "name": fields["name"],
        "description": fields["description"],
        "batchnorm": {key: fields[key] for key in BATCHNORM_KEYS},
        "renorm": renorm_table,
        "ghost": False if ghost is None else {key: getattr(ghost, key) for key in GHOST_KEYS},
        **{kind: _family_table(kind, fields["family"]) for kind in FAMILY_KINDS},
    }


def _family_table(kind: str, dialects: tuple[FamilyDialect, ...]) -> dict[str, Any] | bool:
    for found in dialects:
        if found.kind == kind:
            return {key: getattr(found, key) for key in FAMILY_KEYS[kind]}
    return False


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # a TOML basic string is a JSON string


def render_toml(
    document: Mapping[str, Any], *, header: str = "", notes: Mapping[str, str] | None = None
) -> str:
    """The document as TOML. ``header``: comment lines at the top; ``notes``: a comment
    after each key named ``part.key`` (``batchnorm.update_rate``) or ``key``."""
    notes = notes or {}
    lines = [f"# {line}".rstrip() for line in header.splitlines()]

    def line(key: str, value: Any, path: str) -> str:
        text = f"{key} = {_toml_value(value)}"
        return f"{text}  # {notes[path]}" if path in notes else text

    tables = []
    for key, value in document.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(line(key, value, key))
    for name, table in tables:
        lines += ["", f"[{name}]"]
        lines += [line(key, value, f"{name}.{key}") for key, value in table.items()]
    return "\n".join(lines) + "\n"


def render_json(document: Mapping[str, Any]) -> str:
    """The document as JSON (the same structure as the TOML)."""
    return json.dumps(document, indent=2) + "\n"
