"""normspec.adapters.jax.compile_cache: when the command line turns JAX's persistent cache on, and where."""

from __future__ import annotations

from pathlib import Path

from normspec.adapters.jax import compile_cache


def test_the_default_directory_is_under_the_xdg_cache() -> None:
    environ = {"XDG_CACHE_HOME": "/somewhere"}
    assert compile_cache.enable(environ) == Path("/somewhere/normspec/jax")
    assert environ["JAX_COMPILATION_CACHE_DIR"] == "/somewhere/normspec/jax"
    assert environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] == "0"


def test_without_xdg_the_cache_is_in_the_home_directory() -> None:
    environ: dict[str, str] = {}
    assert compile_cache.enable(environ) == Path.home() / ".cache" / "normspec" / "jax"


def test_the_setting_moves_or_turns_off_the_cache() -> None:
    moved = {compile_cache.SETTING: "/tmp/elsewhere"}
    assert compile_cache.enable(moved) == Path("/tmp/elsewhere")
    assert moved["JAX_COMPILATION_CACHE_DIR"] == "/tmp/elsewhere"
    off = {compile_cache.SETTING: "Off"}
    assert compile_cache.enable(off) is None
    assert "JAX_COMPILATION_CACHE_DIR" not in off


def test_a_cache_the_user_configured_is_left_alone() -> None:
    environ = {
        "JAX_COMPILATION_CACHE_DIR": "/theirs",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1",
    }
    assert compile_cache.enable(environ) is None
    assert environ == {
        "JAX_COMPILATION_CACHE_DIR": "/theirs",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1",
    }


def test_their_thresholds_are_kept_with_our_directory() -> None:
    environ = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "2", "XDG_CACHE_HOME": "/c"}
    compile_cache.enable(environ)
    assert environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "2"
