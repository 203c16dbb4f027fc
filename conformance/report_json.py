"""The JSON report, against the published schema ``report.schema.json``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from normspec.conformance.results import Report

SCHEMA_VERSION = "2"


def report_to_json(report: Report) -> dict[str, Any]:
    """The report as a JSON-compatible dict (schema: ``report.schema.json``)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "normspec_version": report.normspec_version,
        "spec_version": report.spec_version,
        "implementation": {
            "name": report.implementation,
            "target": report.target,
            "versions": report.versions,
        },
        "profile": report.profile,
        "profile_source": report.profile_source,
        "dtypes": list(report.dtypes),
        "seed": report.seed,
        "max_examples": report.max_examples,
        "menu": report.menu,
        "isolation": report.isolation,
        "processes": report.processes,
        "environment": report.environment,
        "started": report.started,
        "seconds": round(report.seconds, 3),
        "interrupted": report.interrupted,
        "conformant": report.conformant,
        "counts": report.counts(),
        "warnings": list(report.warnings),
        "results": [result.to_json() for result in report.results],
    }


def schema() -> dict[str, Any]:
    """The published JSON schema of the report."""
    text = resources.files("normspec.conformance").joinpath("report.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` so that a reader never sees half a file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON data, whatever a library put in it.

    Mappings become dicts with string keys, sequences and NumPy arrays lists; strings,
    integers, floats and booleans their exact built-in types (a library's ``str`` subclass,
    such as torch's ``TorchVersion``, or a NumPy scalar is no type a serializer outside
    Python takes: pytest-xdist's refuses them); NaN and the infinities become the strings
    "nan", "inf", "-inf" (strict JSON); any other object its ``str``.
    """
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isfinite(number):
            return number
        return "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    return str(value)


def report_text(report: Report) -> str:
    return json.dumps(json_safe(report_to_json(report)), indent=2, allow_nan=False) + "\n"


def write_json(report: Report, path: str | os.PathLike[str]) -> None:
    write_atomically(path, report_text(report))
