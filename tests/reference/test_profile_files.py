"""Profile files: the built-in profiles are data files, and a user's file is validated like code."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from normspec.reference.dialects import (
    BUILTIN_NAMES,
    PROFILES,
    ProfileError,
    load_profile_file,
    parse_profile,
    profile,
)
from normspec.reference.profile_files import read_document


def _builtin_text(name: str) -> str:
    folder = resources.files("normspec.reference").joinpath("profiles")
    return folder.joinpath(f"{name}.toml").read_text(encoding="utf-8")


def test_the_builtin_profiles_are_the_package_files_in_order() -> None:
    folder = resources.files("normspec.reference").joinpath("profiles")
    files = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".toml"))
    assert files == sorted(f"{name}.toml" for name in BUILTIN_NAMES)
    assert list(PROFILES) == list(BUILTIN_NAMES)
    assert all(dialect.source is None for dialect in PROFILES.values())


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_each_builtin_file_round_trips(name: str, tmp_path: Path) -> None:
    """Written back by the renderer, a built-in profile reads as itself, in TOML and JSON,
    and its file is exactly what the renderer writes (comments aside)."""
    dialect = PROFILES[name]
    copy_name = f"{name}_copy"
    for suffix, text in (
        (".toml", dialect.to_toml().replace(f'name = "{name}"', f'name = "{copy_name}"')),
        (".json", dialect.to_json().replace(f'"name": "{name}"', f'"name": "{copy_name}"')),
    ):
        path = tmp_path / f"copy{suffix}"
        path.write_text(text)
        loaded = load_profile_file(path)
        assert loaded.name == copy_name and loaded.source == str(path)
        assert loaded == type(dialect)(**{**vars(dialect), "name": copy_name, "source": str(path)})
    body = [line for line in _builtin_text(name).splitlines() if not line.startswith("#")]
    assert body == dialect.to_toml().splitlines()


def _valid() -> dict[str, Any]:
    return copy.deepcopy(PROFILES["tf_keras"].document()) | {"name": "mine"}


def _with(change: Any) -> dict[str, Any]:
    document = _valid()
    change(document)
    return document


def _set(part: str, key: str, value: Any) -> Any:
    def change(document: dict[str, Any]) -> None:
        (document if part == "" else document[part])[key] = value

    return change


def _drop(part: str, key: str) -> Any:
    def change(document: dict[str, Any]) -> None:
        del (document if part == "" else document[part])[key]

    return change


def _zero_debiased(document: dict[str, Any]) -> None:
    document.update(renorm=False, ghost=False)
    document["batchnorm"].update(running_average="zero_debiased", momentum_domain="[0, 1)")


BAD = [
    (_set("", "colour", "blue"), "colour: unknown key (known: format, name,"),
    (_set("batchnorm", "update_rat", "rate"), "batchnorm.update_rat: unknown key"),
    (_set("renorm", "clip", "x"), "renorm.clip: unknown key"),
    (_drop("", "format"), "format: missing (an integer)"),
    (_drop("", "ghost"), "ghost: missing (a table, or false)"),
    (_drop("batchnorm", "running_average"), 'batchnorm.running_average: missing (one of "plain"'),
    (_drop("renorm", "warmup"), 'renorm.warmup: missing (one of "ramp", "switch", "none")'),
    (_set("", "format", 2), "format: must be 1"),
    (_set("", "name", "my profile"), "name: must be a word of letters"),
    (_set("", "name", "torch"), 'name: "torch" is a built-in profile\'s name'),
    (_set("batchnorm", "update_rate", "momentum"), "batchnorm.update_rate: must be one of"),
    (_set("batchnorm", "cumulative_average", "no"), "batchnorm.cumulative_average: must be true"),
    (_set("batchnorm", "default_eps", 0), "batchnorm.default_eps: must be a positive finite"),
    (_set("batchnorm", "default_eps", "1e-3"), "batchnorm.default_eps: must be a number"),
    (_set("batchnorm", "default_momentum", 1.5), "default_momentum: must lie in the momentum"),
    (_set("batchnorm", "momentum_domain", "[0,1]"), "batchnorm.momentum_domain: must be one of"),
    (_set("", "renorm", True), "renorm: must be a [renorm] table, or false"),
    (_set("", "ghost", "no"), "ghost: must be a [ghost] table, or false"),
    (_drop("renorm", "default_renorm_momentum"), "renorm.default_renorm_momentum: missing"),
    (_set("renorm", "statistics", "shared"), "default_renorm_momentum: only with statistics"),
    (_set("ghost", "groups", "random"), "ghost.groups: must be one of"),
    (
        lambda d: d["batchnorm"].update(momentum_domain="[0, 1)", default_momentum=0.5),
        "renorm: the renorm chapter takes momentum_domain [0, 1]",
    ),
    (
        lambda d: (_zero_debiased(d), d["batchnorm"].update(momentum_domain="[0, 1]")),
        "batchnorm.momentum_domain: [0, 1] holds momentum 1, the rate alpha = 0",
    ),
    (
        lambda d: (_zero_debiased(d), d["batchnorm"].update(cumulative_average=True)),
        "batchnorm.running_average: zero_debiased has no cumulative-average mode",
    ),
    (
        lambda d: (_zero_debiased(d), d.update(ghost={"groups": "strided", "running": "averaged"})),
        "batchnorm.running_average: zero_debiased is specified for batch normalization only",
    ),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_an_invalid_document_is_one_line_naming_the_file_and_key(
    change: Any, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(_with(change)))
    with pytest.raises(ProfileError) as raised:
        profile(str(path))
    text = str(raised.value)
    assert text.startswith(f"profile file {path}: ") and "\n" not in text
    assert message in text, text


def test_a_valid_document_loads_and_a_zero_debiased_one_too(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(_with(_zero_debiased)))
    dialect = profile(str(path))
    assert (dialect.running_average, dialect.momentum_domain) == ("zero_debiased", "[0, 1)")
    assert dialect.renorm is None and dialect.ghost is None
    assert dialect.label == f"mine (profile file {path})"
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\)"):
        dialect.rate_from_momentum(1.0)
    assert dialect.excluded_momenta() == (1.0,)
    assert dialect.allows_rate(1.0) and not dialect.allows_rate(0.0)
    assert not dialect.allows_rate(1e-300)  # 1 - 1e-300 is the momentum 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "is not valid TOML"),
        ("[batchnorm\n", "is not valid TOML"),
    ],
)
def test_a_file_that_is_not_toml_is_one_line(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=message) as raised:
        profile(str(path))
    assert "\n" not in str(raised.value)


def test_unknown_names_and_missing_files() -> None:
    with pytest.raises(ProfileError, match=r"unknown profile 'nope' \(known: equinox_batch, flax"):
        profile("nope")
    with pytest.raises(ProfileError, match=r"cannot read profile file \./absent\.toml"):
        profile("./absent.toml")
    with pytest.raises(KeyError):  # what callers caught for an unknown name still works
        profile("nope")


def test_a_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(PROFILES["torch"].to_toml().replace('"torch"', '"mine"'))
    assert profile(str(path)).default_eps == 1e-5
    path.write_text(path.read_text().replace("default_eps = 1e-05", "default_eps = 0.002"))
    assert profile(str(path)).default_eps == 0.002


def test_builtin_names_are_reserved_for_the_builtin_files() -> None:
    document = read_document(
        Path(str(resources.files("normspec.reference"))) / "profiles" / "flax.toml"
    )
    assert parse_profile(document, "flax.toml", builtin=True) == PROFILES["flax"]
    with pytest.raises(ValueError, match="built-in profile's name"):
        parse_profile(document, "copy.toml")
