"""The JSON report, against the published schema ``report.schema.json``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from normspec.conformance.results import Report

SCHEMA_VERSION = "1"


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
        "dtypes": list(report.dtypes),
        "seed": report.seed,
        "max_examples": report.max_examples,
        "menu": report.menu,
        "isolation": report.isolation,
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
    """``value`` with NaN and infinities as the strings "nan", "inf", "-inf" (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def report_text(report: Report) -> str:
    return json.dumps(json_safe(report_to_json(report)), indent=2, allow_nan=False) + "\n"


def write_json(report: Report, path: str | os.PathLike[str]) -> None:
    write_atomically(path, report_text(report))
