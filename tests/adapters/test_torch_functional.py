"""The torch.nn.functional.batch_norm adapter, the built-in target ``torch.functional``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
import torch
from adapter_cases import torch_layout_config

from normspec.adapters import UnsupportedConfig
from normspec.adapters.registry import load_target
from normspec.adapters.torch.functional import FunctionalBatchNorm, FunctionalLayer
from normspec.conformance.dtypes import round_to
from normspec.reference import RunningStatistics

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda is not available")


def _input(shape: tuple[int, ...], dtype: str = "float64") -> np.ndarray:
    return round_to(np.random.default_rng(5).standard_normal(shape) * 2.0 - 1.0, dtype)


def test_the_alias_resolves_with_the_profile() -> None:
    impl = load_target("torch.functional", "torch")
    assert isinstance(impl, FunctionalBatchNorm)
    assert impl.profile == "torch"
    assert impl.name.startswith("torch.nn.functional.batch_norm (torch ")
    assert impl.versions()["torch"] == torch.__version__


def test_capabilities() -> None:
    caps = FunctionalBatchNorm().capabilities()
    assert caps.dtypes == {"float64", "float32", "float16", "bfloat16"}
    assert caps.ranks == {2, 3, 4, 5}
    assert not caps.cumulative_average and not caps.step_counter
    assert caps.untracked and caps.without_affine and caps.strided_input
    assert "float momentum" in caps.notes["cumulative_average"]


def test_momentum_none_is_unsupported_as_in_torch() -> None:
    with pytest.raises(TypeError, match="momentum"):
        torch.nn.functional.batch_norm(
            torch.ones(2, 1),
            torch.zeros(1),
            torch.ones(1),
            training=True,
            momentum=None,  # type: ignore[arg-type]
        )
    with pytest.raises(UnsupportedConfig, match="momentum=None"):
        FunctionalBatchNorm().build(torch_layout_config(momentum=None))


def test_strided_inputs_arrive_with_their_strides(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = FunctionalBatchNorm().build(torch_layout_config(dtype="bfloat16"))
    seen: list[tuple[tuple[int, ...], torch.dtype]] = []
    original = torch.nn.functional.batch_norm

    def recording(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append((x.stride(), x.dtype))
        return original(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "batch_norm", recording)
    x = _input((4, 5, 6, 3), "bfloat16").transpose(0, 3, 1, 2)  # channels last
    layer.train_step(x)
    layer.infer(x)
    layer.vjp(x, x, training=False)
    assert seen == [(tuple(s // 8 for s in x.strides), torch.bfloat16)] * 3


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_every_dtype_round_trips(dtype: str) -> None:
    layer = FunctionalBatchNorm().build(torch_layout_config(rank=3, dtype=dtype))
    assert isinstance(layer, FunctionalLayer)
    assert layer.running_var is not None and layer.weight is not None
    half = dtype in ("float16", "bfloat16")
    assert layer.running_var.dtype == (torch.float32 if half else getattr(torch, dtype))
    x = _input((4, 3, 5), dtype)
    y = layer.train_step(x)
    np.testing.assert_array_equal(round_to(y, dtype), y)
    grads = layer.vjp(x, x, training=True)
    np.testing.assert_array_equal(round_to(grads.dx, dtype), grads.dx)
    assert grads.dgamma.shape == (3,)


def test_vjp_leaves_the_running_statistics_as_they_were() -> None:
    layer = FunctionalBatchNorm().build(torch_layout_config())
    state = RunningStatistics(np.array([0.5, -1.0, 2.0]), np.array([1.5, 0.25, 4.0]), 3)
    layer.set_state(state)
    x = _input((4, 3, 2, 2))
    layer.vjp(x, x, training=True)
    got = layer.state()
    assert got is not None
    np.testing.assert_array_equal(got.mean, state.mean)
    np.testing.assert_array_equal(got.var, state.var)
    layer.train_step(x)
    after = layer.state()
    assert after is not None and not np.array_equal(after.mean, state.mean)
    assert after.steps == 3  # no step counter: the steps last set


def test_untracked_inference_uses_batch_statistics() -> None:
    layer = FunctionalBatchNorm().build(torch_layout_config(rank=2, track_running_stats=False))
    x = _input((6, 3))
    assert layer.state() is None
    np.testing.assert_array_equal(layer.infer(x), layer.train_step(x))


@CUDA
def test_cuda_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMSPEC_TORCH_DEVICE", "cuda")
    impl = load_target("torch.functional", "torch")
    assert impl.versions()["device"].startswith("cuda")
    layer = impl.build(torch_layout_config(dtype="float16"))
    assert isinstance(layer, FunctionalLayer)
    assert layer.running_mean is not None and layer.running_mean.device.type == "cuda"
    x = _input((4, 3, 2, 2), "float16")
    np.testing.assert_array_equal(round_to(layer.train_step(x), "float16"), layer.train_step(x))
