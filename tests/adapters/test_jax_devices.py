"""normspec.adapters.jax.devices: the command line asks XLA for four host devices (sync.*)."""

from normspec.adapters.jax import devices as jax_devices


def test_the_flag_is_added_to_the_users_own() -> None:
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert jax_devices.enable(environ)
    assert environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4"


def test_a_device_count_the_user_chose_is_kept() -> None:
    chosen = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert not jax_devices.enable(chosen)
    assert chosen["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


def test_without_xla_flags_the_flag_is_set() -> None:
    environ: dict[str, str] = {}
    assert jax_devices.enable(environ)
    assert environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
