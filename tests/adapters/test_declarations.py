"""The adapter packages' declarations (normspec.adapters.declarations): one place per adapter,
collected by the registry and the report's built-in list, without importing a framework."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter

import pytest

from normspec.adapters.declarations import PACKAGES, collected
from normspec.adapters.registry import ALIASES, DECLARED, _import_attr
from normspec.conformance.builtin import BUILTIN_TARGETS

FRAMEWORKS = ("torch", "jax", "flax", "haiku", "equinox", "tensorflow", "keras", "tf_keras", "onnx")


def _installed(*names: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in names)


def test_collecting_the_declarations_imports_no_framework() -> None:
    code = (
        "import sys, normspec.adapters.registry, normspec.conformance.builtin\n"
        f"print(sorted(set({FRAMEWORKS!r}) & set(sys.modules)))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"


def test_every_target_is_declared_once_and_the_report_lists_the_reported_ones() -> None:
    targets = collected().targets
    assert collected() == DECLARED
    repeated = [name for name, count in Counter(t.target for t in targets).items() if count > 1]
    assert not repeated
    assert tuple(t for t in targets if t.reported) == BUILTIN_TARGETS
    assert BUILTIN_TARGETS[0].target == "reference"
    assert set(ALIASES) == {t.target for t in targets if t.factory}
    # every package contributes, in PACKAGES order
    assert len(PACKAGES) == len(set(PACKAGES))
    for package in PACKAGES:
        module = importlib.import_module(f"normspec.adapters.{package}")
        assert module.ADAPTERS.targets or module.ADAPTERS.recognisers, package


@pytest.mark.parametrize("entry", collected().targets, ids=lambda e: e.target)
def test_a_declared_factory_exists_where_its_frameworks_are_installed(entry: object) -> None:
    from normspec.adapters.declarations import BuiltinTarget

    assert isinstance(entry, BuiltinTarget)
    if not _installed(*entry.frameworks):
        pytest.skip(f"{', '.join(entry.frameworks)} not installed")
    if entry.factory:
        assert callable(_import_attr(entry.factory))
    else:  # a class a recogniser of one of its frameworks takes
        assert ":" in entry.target
        assert any(r.framework in entry.frameworks for r in DECLARED.recognisers)


def test_declared_recognisers_explainers_and_loaders_exist() -> None:
    for declared in (*DECLARED.recognisers, *DECLARED.explainers):
        if _installed(declared.framework):
            assert callable(_import_attr(declared.function)), declared
    for suffix, loader in DECLARED.file_loaders:
        assert suffix.startswith(".")
        if _installed("onnx"):
            assert callable(_import_attr(loader))
