"""The tables of spec/dialects.md agree with normspec.reference.dialects.PROFILES."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from normspec.reference.dialects import PROFILES, Dialect, profile
from normspec.spec._markdown import parse_chapter

DASH = "—"
ROOT = Path(__file__).parents[2]


def _chapter() -> str:
    return resources.files("normspec.spec").joinpath("dialects.md").read_text(encoding="utf-8")


def _table_at(lines: list[str], start: int) -> list[dict[str, str]]:
    """The first Markdown table after line ``start``, as a list of rows by column."""
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows or line.startswith("#"):
            break
    assert len(rows) >= 2, f"no table after line {start + 1}"
    header, separator, *body = rows
    assert all(set(cell) <= {"-", ":"} for cell in separator)
    return [dict(zip(header, row, strict=True)) for row in body]


def _table_after(heading: str, occurrence: int = 0) -> list[dict[str, str]]:
    lines = _chapter().splitlines()
    starts = [i for i, line in enumerate(lines) if line == heading]
    return _table_at(lines, starts[occurrence])


def _bool(cell: str) -> bool:
    assert cell in ("true", "false"), cell
    return cell == "true"


def test_the_profiles_table_matches_profiles() -> None:
    rows = _table_after("### Profiles")
    assert [row["profile"] for row in rows] == list(PROFILES)
    for row in rows:
        dialect = PROFILES[row["profile"]]
        assert row["update_rate"] == dialect.update_rate
        assert row["running_variance"] == dialect.running_variance
        assert _bool(row["cumulative_average"]) == dialect.cumulative_average
        assert row["running_average"] == dialect.running_average
        assert row["momentum_domain"] == dialect.momentum_domain
        assert float(row["default_eps"]) == dialect.default_eps
        assert float(row["default_momentum"]) == dialect.default_momentum


def test_the_renorm_profiles_table_matches_profiles() -> None:
    rows = _table_after("### Renorm profiles")
    assert [row["profile"] for row in rows] == list(PROFILES)
    fields = ("average", "statistics", "clipping", "sigma_floor", "warmup")
    for row in rows:
        renorm = PROFILES[row["profile"]].renorm
        assert row["renorm"] == ("no" if renorm is None else "yes")
        if renorm is None:
            assert all(row[field] == DASH for field in (*fields, "default_renorm_momentum"))
            continue
        for field in fields:
            assert row[field] == getattr(renorm, field), (row["profile"], field)
        momentum = row["default_renorm_momentum"]
        expected = renorm.default_renorm_momentum
        assert (momentum == DASH) if expected is None else (float(momentum) == expected)


def test_the_ghost_profiles_table_matches_profiles() -> None:
    rows = _table_after("### Ghost profiles")
    assert [row["profile"] for row in rows] == list(PROFILES)
    for row in rows:
        ghost = PROFILES[row["profile"]].ghost
        assert row["ghost"] == ("no" if ghost is None else "yes")
        if ghost is None:
            assert row["ghost_groups"] == row["ghost_running"] == DASH
        else:
            assert (row["ghost_groups"], row["ghost_running"]) == (ghost.groups, ghost.running)


def test_ghost_library_rows_use_the_ghost_dialect_values() -> None:
    rows = _table_after("### Libraries", occurrence=2)
    assert any("virtual_batch_size" in row["implementation"] for row in rows)
    for row in rows:
        assert row["ghost_groups"] in {"consecutive", "strided", DASH}
        assert row["ghost_running"] in {"sequential", "averaged", DASH}


def _row_profile(cell: str) -> Dialect | None:
    """A library row's profile: a built-in name, or a profile file of this repository."""
    name = cell.split(",")[0].strip()
    if name == DASH:
        return None
    if name.startswith("`"):
        return profile(str(ROOT / name.strip("`")))
    return PROFILES[name]


def test_library_rows_use_the_dialect_values() -> None:
    """Every BN library row names known parameter values and a profile (a built-in one or
    a profile file) whose parameters are the row's."""
    allowed = {
        "update_rate": {"rate", "decay", DASH},
        "running_variance": {"biased", "unbiased", DASH},
        "cumulative_average": {"true", "false", DASH},
        "running_average": {"plain", "zero_debiased", DASH},
        "momentum_domain": {"[0, 1]", "[0, 1)", "(0, 1]", "(0, 1)", DASH},
    }
    rows = _table_after("### Libraries")
    assert len(rows) >= 12
    for row in rows:
        for column, values in allowed.items():
            assert row[column] in values, (row["library"], column)
        dialect = _row_profile(row["profile"])
        if dialect is None:
            continue
        for column in ("update_rate", "running_variance", "running_average", "momentum_domain"):
            assert row[column] == getattr(dialect, column), (row["library"], column)


def test_renorm_library_rows_with_profile_files_load() -> None:
    """The renorm layers of user code are profile files with their rows' parameters."""
    for row in _table_after("### Libraries", occurrence=1):
        if "user code" not in row["implementation"]:
            continue
        name = {"batchrenorm": "batchrenorm", "SBX": "sbx_batchrenorm"}[
            row["implementation"].split()[0].strip("`")
        ]
        renorm = profile(str(ROOT / "examples" / "profiles" / f"{name}.toml")).renorm
        assert renorm is not None
        for column in ("average", "statistics", "clipping", "sigma_floor", "warmup"):
            assert row[column] == getattr(renorm, column), (name, column)


def test_renorm_library_rows_use_the_renorm_dialect_values() -> None:
    rows = _table_after("### Libraries", occurrence=1)
    allowed = {
        "average": {"std", "variance_biased", "variance_unbiased", DASH},
        "statistics": {"shared", "separate", DASH},
        "clipping": {"symmetric", "independent", DASH},
        "sigma_floor": {"none", "sqrt_eps", DASH},
        "warmup": {"ramp", "switch", "none", DASH},
    }
    names = [row["implementation"] for row in rows]
    assert any("tf_keras" in name for name in names)
    assert any("Keras 3" in name for name in names)
    for row in rows:
        for column, values in allowed.items():
            assert row[column] in values, (row["implementation"], column)


def test_dialect_parameters_are_not_clauses() -> None:
    """dialects.md defines no clause: no ``### `id` (LEVEL)`` heading."""
    text = _chapter()
    assert parse_chapter(text, "dialects") == []
    assert not any(line.startswith("### `") for line in text.splitlines())
