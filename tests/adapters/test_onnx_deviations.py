"""What ONNX's runtimes fail, shown by onnx, onnxruntime and NumPy alone (no normspec).

Each test is the minimal example README's "Checking ONNX models" gives for a failure of
``normspec check onnx.reference`` or ``normspec check onnxruntime`` (profile ``onnx``), and
asserts the deviation as the pinned releases have it: a release that fixes one fails its
test, and the README's list must change with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

pytest.importorskip("onnx")
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

INPUTS = ["X", "scale", "B", "mean", "var"]
ELEMENTS = {np.float64: TensorProto.DOUBLE, np.float16: TensorProto.FLOAT16}


def model(
    opset: int, outputs: Sequence[str], dtype: type = np.float64, **attributes: float
) -> bytes:
    """A one-node BatchNormalization model, every tensor of ``dtype``."""
    element = ELEMENTS[dtype]
    node = helper.make_node("BatchNormalization", INPUTS, list(outputs), **attributes)
    graph = helper.make_graph(
        [node],
        "bn",
        [helper.make_tensor_value_info(n, element, None) for n in INPUTS],
        [helper.make_tensor_value_info(n, element, None) for n in outputs],
    )
    opsets = [helper.make_opsetid("", opset)]
    built = helper.make_model(graph, opset_imports=opsets)
    built.ir_version = helper.find_min_ir_version_for(opsets)
    return built.SerializeToString()


def feeds(x: object, features: int = 1, dtype: type = np.float64) -> dict[str, np.ndarray]:
    """``x`` (N x C), scale 1, B 0, running mean 0 and running variance 1."""
    one, zero = np.ones(features, dtype), np.zeros(features, dtype)
    return {"X": np.array(x, dtype), "scale": one, "B": zero, "mean": zero, "var": one}


def evaluate(serialized: bytes, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnx import load_model_from_string

    return list(ReferenceEvaluator(load_model_from_string(serialized)).run(None, inputs))


def ort_run(serialized: bytes, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    return list(session.run(None, inputs))


Runner = Callable[[bytes, dict[str, np.ndarray]], list[np.ndarray]]
TRAINING_15 = ("Y", "running_mean", "running_var")
RUNNERS: list[Runner] = [evaluate, ort_run]


# -- both runtimes (onnxruntime at opsets 7 to 15, onnx.reference at 14 and 15) ------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the mean of no value
@pytest.mark.parametrize("run", RUNNERS)
def test_an_empty_batch_writes_nan_into_the_running_statistics(run: Runner) -> None:
    """bn.degenerate.empty_batch (MUST)."""
    _, mean, var = run(model(15, TRAINING_15, training_mode=1), feeds(np.zeros((0, 1))))
    assert np.isnan(mean).all() and np.isnan(var).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # eps 0: 0 / 0 in the reference
@pytest.mark.parametrize("run", RUNNERS)
def test_eps_0_and_a_momentum_outside_0_1_run_without_an_error(run: Runner) -> None:
    """bn.params.invalid (SHOULD); and momentum -0.5 (alpha 1.5) drives the running
    variance negative: bn.params.no_nan_state (MUST)."""
    x = [[0.0], [0.0]]
    run(model(15, TRAINING_15, training_mode=1, epsilon=0.0), feeds(x))
    _, _, var = run(model(15, TRAINING_15, training_mode=1, momentum=-0.5), feeds(x))
    assert var.tolist() == [-0.5]  # -0.5 * 1 + 1.5 * 0


# -- onnxruntime ---------------------------------------------------------------------------


def test_onnxruntime_has_no_kernel_at_opset_6() -> None:
    with pytest.raises(Exception, match="Could not find an implementation for BatchNormalization"):
        ort_run(model(6, ["Y"], is_test=1), feeds([[0.0], [1.0]]))


# -- onnx.reference ------------------------------------------------------------------------


def test_the_reference_computes_1_minus_momentum_in_float32() -> None:
    """bn.running.mean and bn.running.var in float64 (momentum 0.1, the float32 value
    0.10000000149011612): alpha is 1 - momentum rounded to float32."""
    x = [[0.0], [1.0]]
    _, mean, _ = evaluate(model(15, TRAINING_15, training_mode=1, momentum=0.1), feeds(x))
    momentum = float(np.float32(0.1))
    assert mean[0] == 0.5 * float(np.float32(1.0 - momentum)) != 0.5 * (1.0 - momentum)


@pytest.mark.parametrize(("opset", "outputs", "mode"), [(15, TRAINING_15, 1), (15, ["Y"], 0)])
def test_the_reference_broadcasts_one_feature_over_two(
    opset: int, outputs: Sequence[str], mode: int
) -> None:
    """bn.params.shape (MUST): scale, B, mean and var of one feature, an input of two."""
    x = [[0.0, 1.0], [2.0, 3.0]]
    y = evaluate(model(opset, outputs, training_mode=mode), feeds(x, features=1))[0]
    assert y.shape == (2, 2)


def test_the_reference_rounds_the_float16_batch_mean_to_float16() -> None:
    """bn.accuracy.forward (SHOULD): the mean of 100, 100, 100.0625 is 100.0208, rounded to
    100 in float16 before x - mean (the schema computes ReduceMean in float for float16)."""
    x = [[100.0], [100.0], [100.0625]]
    y = evaluate(model(15, TRAINING_15, np.float16, training_mode=1), feeds(x, dtype=np.float16))[0]
    exact = np.array(x) - np.mean(x)
    exact /= np.sqrt(np.var(x) + 1e-5)
    assert exact.ravel().round(3).tolist() == [-0.703, -0.703, 1.406]
    assert y.ravel().tolist() == [0.0, 0.0, 1.7255859375]


@pytest.mark.parametrize(
    ("opset", "outputs", "attributes", "error"),
    [
        (6, ["Y", "mean", "var", "saved_mean", "saved_var"], {"is_test": 0}, "is a tuple"),
        (7, ["Y"], {}, "is a tuple"),
        (7, ["Y", "mean", "var", "saved_mean", "saved_var"], {}, "is a tuple"),
        (9, ["Y", "mean", "var", "saved_mean", "saved_var"], {}, "Unable to find output name"),
    ],
)
def test_the_reference_cannot_run_opsets_6_to_9_training_nor_7_at_all(
    opset: int, outputs: Sequence[str], attributes: dict[str, int], error: str
) -> None:
    """Every clause errs (conv.io.shape_dtype and the rest): a training call of opsets 6,
    7 and 9 raises, and so does an inference call of opset 7 (no is_test: the training
    path, whose result is a tuple)."""
    with pytest.raises(Exception, match=error):
        evaluate(model(opset, outputs, **attributes), feeds([[0.0], [1.0]]))


def test_the_reference_infers_at_opset_9_with_the_momentum_updated_statistics() -> None:
    """bn.infer.output (MUST): with running mean 0 and variance 1, inference is x / sqrt(1 +
    eps); opset 9 normalizes with 0.9 * running + 0.1 * batch statistics instead."""
    x = [[0.0], [2.0]]
    y = evaluate(model(9, ["Y"]), feeds(x))[0]
    mean, var = 0.1 * 1.0, 0.9 + 0.1 * 1.0
    assert np.allclose(y.ravel(), (np.array([0.0, 2.0]) - mean) / np.sqrt(var + 1e-5))
    assert not np.allclose(y.ravel(), np.array([0.0, 2.0]) / np.sqrt(1 + 1e-5))
