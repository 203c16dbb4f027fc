"""The built-in family targets' profiles say what their libraries do, as measured (issue 15:
dialect values measured, not read from sources; dialects.md: family.*).

For every built-in LayerNorm, RMSNorm, GroupNorm and InstanceNorm target whose library is
installed, ``normspec identify``'s family probes run on the real library, and every value
they measure (the default eps wherever the adapter builds the layer without one; RMSNorm's
centering, scale, eps placement and cast) equals the one of the profile the target claims.
Keras targets of a backend other than this process's run in one process per backend (Keras
fixes its backend on import).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from normspec.adapters.declarations import BuiltinTarget, collected
from normspec.conformance.builtin import missing_frameworks
from normspec.reference.dialects import PROFILES

#: The family targets (every built-in one a LayerNorm-, RMSNorm-, GroupNorm- or
#: InstanceNorm-shaped class or operator).
FAMILY: dict[str, BuiltinTarget] = {
    t.target: t
    for t in collected().targets
    if re.search(r"(?i)(layer|rms|group|instance)norm", t.target)
}
#: What a probe cannot tell, with the reason: (target, KIND.PARAMETER).
UNMEASURED = {
    # haiku computes the whole layer in float16: neither one rounding nor two
    ("haiku:RMSNorm", "rmsnorm.cast"),
}


def measured(target: str) -> dict[str, Any]:
    """``{KIND.PARAMETER: value}`` identify's family probes measure on ``target`` (in this
    process), and the profile values they contradict."""
    from normspec.adapters.registry import load_target
    from normspec.conformance.guard import Guard
    from normspec.conformance.identify_family import family_differences, probe_family

    entry = FAMILY[target]
    implementation = load_target(target, entry.profile)
    capabilities = implementation.capabilities()
    dtype = "float64" if "float64" in capabilities.dtypes else "float32"
    found = probe_family(implementation, capabilities, dtype, Guard(60.0))  # type: ignore[arg-type]
    values = {key: value for key, value, _ in found}
    return {"values": values, "differs": family_differences(values, PROFILES[entry.profile])}


#: :func:`measured` of the targets named, in a process of its own (``KERAS_BACKEND`` set).
_ELSEWHERE = (
    "import json, runpy, sys; m = runpy.run_path(sys.argv[1]); "
    "print(json.dumps({t: m['measured'](t) for t in sys.argv[2:]}))"
)


def _keras_backend(entry: BuiltinTarget) -> str | None:
    return entry.environment.get("KERAS_BACKEND")


def _installed() -> list[str]:
    return [name for name, entry in FAMILY.items() if not missing_frameworks(entry)]


@pytest.fixture(scope="module")
def measurements() -> dict[str, Any]:
    """Every installed family target's measurements (Keras' other backends in parallel
    processes, the rest here)."""
    here = os.environ.get("KERAS_BACKEND", "tensorflow")
    if "keras" in sys.modules:
        here = sys.modules["keras"].backend.backend()
    elsewhere: dict[str, list[str]] = {}
    local = []
    for target in _installed():
        backend = _keras_backend(FAMILY[target])
        if backend is not None and backend != here:
            elsewhere.setdefault(backend, []).append(target)
        else:
            local.append(target)
    running = {
        backend: subprocess.Popen(
            [sys.executable, "-c", _ELSEWHERE, __file__, *targets],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "KERAS_BACKEND": backend},
        )
        for backend, targets in elsewhere.items()
    }
    results = {target: measured(target) for target in local}
    for backend, process in running.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, (backend, err[-3000:])
        results.update(json.loads(out.strip().splitlines()[-1]))
    return results


def test_every_family_profile_value_is_the_measured_one(measurements: dict[str, Any]) -> None:
    assert measurements, "no family library installed"
    contradicted = {t: m["differs"] for t, m in measurements.items() if m["differs"]}
    assert not contradicted, {t: (measurements[t]["values"], d) for t, d in contradicted.items()}


def test_the_default_eps_is_measured_on_every_family_target(
    measurements: dict[str, Any],
) -> None:
    unmeasured = {
        (target, key)
        for target, found in measurements.items()
        for key, value in found["values"].items()
        if value is None
    }
    assert unmeasured <= UNMEASURED, unmeasured - UNMEASURED
    for target, found in measurements.items():
        kinds = {key.partition(".")[0] for key in found["values"]}
        assert kinds and all(f"{kind}.default_eps" in found["values"] for kind in kinds), target


def test_a_flax_nnx_groupnorm_is_not_taken_for_a_torch_function() -> None:
    """nnx's ``GroupNorm(num_features, num_groups, ...)`` has ``F.group_norm``'s second
    parameter: with torch imported, torch's recogniser took the class for a function."""
    pytest.importorskip("torch")
    pytest.importorskip("flax")
    from normspec.adapters.jax.family import JaxFamily
    from normspec.adapters.registry import load_target

    assert isinstance(load_target("flax.nnx:GroupNorm", "flax"), JaxFamily)


def test_a_profile_file_may_leave_out_the_grouped_tables() -> None:
    """A format-1 file written before ``[groupnorm]`` and ``[instancenorm]`` reads, with the
    specification's default eps there (as ``false`` gives); the built-in ones carry them."""
    from pathlib import Path

    from normspec.reference.dialects import profile

    gemma = Path(__file__).parents[2] / "examples" / "profiles" / "gemma_rmsnorm.toml"
    assert "groupnorm" not in gemma.read_text()
    read = profile(str(gemma))
    assert read.family_dialect("groupnorm").default_eps == 1e-5
    assert PROFILES["flax"].family_dialect("groupnorm").default_eps == 1e-6
    assert PROFILES["keras"].family_dialect("groupnorm").default_eps == 1e-3
