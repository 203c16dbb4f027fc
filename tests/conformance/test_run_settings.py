"""The run's settings are validated once, when built (conformance.run_settings), for
``normspec check``, ``normspec report`` and the plugin alike."""

from __future__ import annotations

from typing import Any

import pytest

from normspec.conformance.matrix import MatrixOptions
from normspec.conformance.run_settings import OptionsError, RunSettings, shared_settings
from normspec.conformance.runner import CheckOptions

INVALID: list[tuple[dict[str, Any], str | None, str]] = [
    ({"max_examples": 0}, "max_examples", "must be at least 1, not 0"),
    ({"timeout": 0.0}, "timeout", "must be positive, not 0"),
    ({"shrink_seconds": -1.0}, "shrink_seconds", "must be positive, not -1"),
    ({"menu": -1}, "menu", "takes 0 (settings drawn freely) or a number of entries, not -1"),
    ({"dtypes": ["float8"]}, None, "unknown dtype 'float8'"),
    ({"clauses": "bn.nothing.*"}, None, "clause pattern 'bn.nothing.*' matches no checked"),
]


@pytest.mark.parametrize("kind", [RunSettings, CheckOptions, MatrixOptions])
@pytest.mark.parametrize(("changes", "setting", "message"), INVALID)
def test_an_invalid_setting_raises_when_the_settings_are_built(
    kind: type[RunSettings], changes: dict[str, Any], setting: str | None, message: str
) -> None:
    with pytest.raises(OptionsError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        kind(**changes)
    assert e.value.setting == setting
    spelled = e.value.spelled("--x")
    assert spelled.startswith("--x ") if setting else spelled == str(e.value)


def test_check_options_resolve_the_profile() -> None:
    with pytest.raises(OptionsError, match="no_such_profile"):
        CheckOptions(profile="no_such_profile")


def test_a_run_inherits_the_settings_of_the_command_that_starts_it() -> None:
    matrix = MatrixOptions(dtypes=["float32"], clauses="bn.train.*", seed=7, menu=0, paper=False)
    check = CheckOptions(**shared_settings(matrix), profile="torch", target="reference")
    assert (check.dtypes, check.clauses, check.seed, check.menu) == (
        ["float32"],
        "bn.train.*",
        7,
        0,
    )
    assert check.max_examples == matrix.max_examples == 10  # the report's default
