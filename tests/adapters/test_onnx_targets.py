"""The ONNX targets as a user names them: built-in runtimes and opsets, nodes of ``.onnx``
files, a third-party exporter's decomposed graph; the float32 attributes accounted for.

Each check runs a few clauses on 10 examples: the default checks' outcomes are in
benchmarks/onnx_speed.py and README's "Checking ONNX models".
"""

from __future__ import annotations

import importlib
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
import onnx
from adapter_cases import FIXTURES  # noqa: F401  (puts tests/fixtures on sys.path)
from onnx import TensorProto, helper, numpy_helper

from normspec.adapters import Capabilities
from normspec.adapters.onnx.op import OnnxBatchNormalization, onnxruntime_cpu
from normspec.adapters.registry import TargetError, load_target
from normspec.cli import main
from normspec.conformance.builtin import find_builtin
from normspec.conformance.runner import CheckOptions, check_implementation
from normspec.conformance.strategies import held_setting
from normspec.reference.dialects import profile

VALUE_CLAUSES = "bn.train.output,bn.infer.output,bn.running.mean,bn.running.var"
EPS32 = float(np.float32(1e-5))


def outcomes(implementation: Any, clauses: str, **options: Any) -> dict[str, str]:
    options = {"max_examples": 10, **options}
    report = check_implementation(
        implementation, CheckOptions(profile="onnx", clauses=clauses, **options)
    )
    return {r.clause_id: r.outcome for r in report.results}


# -- the float32 attributes --------------------------------------------------------------


def test_a_case_holds_float32_eps_and_momentum_and_the_rate_they_mean() -> None:
    onnx_dialect = profile("onnx")
    caps = Capabilities(setting_dtype="float32")
    eps, momentum, rate = held_setting(caps, onnx_dialect, 1e-5, 0.1)
    assert (eps, momentum) == (EPS32, float(np.float32(0.9)))
    assert rate == 1.0 - momentum != 0.1  # the rate the model's momentum means
    assert held_setting(Capabilities(), onnx_dialect, 1e-5, 0.1) == (1e-5, 1.0 - 0.1, 0.1)
    held = Capabilities(held_setting=(0.5, 0.75))
    assert held_setting(held, onnx_dialect, 1e-5, 0.1) == (0.5, 0.75, 0.25)


class Float64Settings(OnnxBatchNormalization):
    """The adapter were it to claim float64 attributes: what the accounting prevents."""

    supports = replace(OnnxBatchNormalization.supports, setting_dtype="float64")


def test_float64_layers_pass_because_the_configuration_is_what_the_model_holds() -> None:
    impl = onnxruntime_cpu()
    assert any("float32 attributes" in w for w in impl.capabilities().warnings)
    found = outcomes(impl, VALUE_CLAUSES, dtypes=["float64"])
    assert set(found.values()) == {"pass"}
    unaccounted = outcomes(
        Float64Settings(impl.runtime),
        "bn.train.output,bn.infer.output",
        dtypes=["float64"],
        shrink_seconds=0.5,
    )
    assert unaccounted["bn.train.output"] == unaccounted["bn.infer.output"] == "fail"


# -- built-in targets --------------------------------------------------------------------


def test_built_in_targets_name_their_opset_and_runtime() -> None:
    assert find_builtin("onnxruntime") is not None and find_builtin("onnx.reference") is not None
    impl = load_target("onnxruntime(opset=9)", "onnx")
    assert impl.name == "ONNX BatchNormalization-9 on onnxruntime"
    assert impl.capabilities().dtypes == {"float64", "float32", "float16"}
    assert "bfloat16" in load_target("onnx.reference", "onnx").capabilities().dtypes


def test_onnxruntime_has_no_opset_6_kernel_and_says_so() -> None:
    caps = load_target("onnxruntime(opset=6)", "onnx").capabilities()
    assert not caps.dtypes
    assert any("Could not find an implementation" in w for w in caps.warnings)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("onnxruntime(opset=8)", "BatchNormalization is defined at opsets 6, 7, 9, 14, 15"),
        ("onnxruntime(runtime='x')", "takes opset, not runtime"),
        ("missing.onnx#bn", "no file missing.onnx"),
    ],
)
def test_bad_targets_are_one_line_usage_errors(
    target: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", target]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# -- nodes of .onnx files ---------------------------------------------------------------


def write_model(
    path: Path,
    *,
    eps: float = 1e-5,
    training: bool = False,
    nodes: int = 1,
    computed_scale: bool = False,
) -> str:
    """A model of a Relu and ``nodes`` BatchNormalization nodes (bn1, ...) over 3
    features, its parameters initializers (``computed_scale``: bn1's scale a Relu's output)."""
    values = {
        "w": [1.5, 0.5, 2.0],
        "b": [0.1, -0.2, 0.3],
        "rm": [0.2, 0.1, -0.3],
        "rv": [1.2, 0.7, 2.0],
    }
    initializers = [
        numpy_helper.from_array(np.array(v, dtype=np.float32), k) for k, v in values.items()
    ]
    graph_nodes = [helper.make_node("Relu", ["x"], ["h0"], name="relu")]
    if computed_scale:
        graph_nodes.append(helper.make_node("Relu", ["w"], ["w_relu"], name="scale_relu"))
    outputs: list[str] = []
    for i in range(1, nodes + 1):
        scale = "w_relu" if computed_scale else "w"
        outputs = [f"h{i}", f"rm{i}", f"rv{i}"] if training else [f"h{i}"]
        mode = {"training_mode": 1} if training else {}
        graph_nodes.append(
            helper.make_node(
                "BatchNormalization",
                [f"h{i - 1}", scale, "b", "rm", "rv"],
                outputs,
                name=f"bn{i}",
                epsilon=eps,
                momentum=0.9,
                **mode,
            )
        )
    graph = helper.make_graph(
        graph_nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = helper.find_min_ir_version_for(model.opset_import)
    onnx.save(model, path)
    return str(path)


def test_an_inference_node_is_checked_in_inference_with_the_attributes_it_holds(
    tmp_path: Path,
) -> None:
    impl = load_target(write_model(tmp_path / "m.onnx") + "#bn1", "onnx")
    caps = impl.capabilities()
    assert caps.dtypes == {"float32"} and caps.ranks == {4} and not caps.training
    assert caps.held_setting == (EPS32, float(np.float32(0.9)))
    found = outcomes(impl, "conv.*,bn.*")
    assert found["bn.infer.output"] == found["bn.params.shape"] == "pass"
    assert found["bn.train.output"] == found["bn.running.initial"] == "not_applicable"
    assert found["bn.params.invalid"] == "not_applicable"
    assert "fail" not in found.values() and "error" not in found.values()


def test_a_torch_export_is_conformant(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.2).eval()
    path = tmp_path / "torch_bn.onnx"
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, (torch.randn(2, 3, 4, 5),), str(path), dynamo=False)
    except Exception as problem:  # an exporter that needs what this machine lacks
        pytest.skip(f"torch.onnx.export: {problem}")
    impl = load_target(str(path), "onnx")
    assert impl.capabilities().held_setting == (
        float(np.float32(1e-3)),
        float(np.float32(0.8)),
    )
    found = outcomes(impl, "conv.io.*,bn.infer.*,bn.params.shape,bn.accuracy.inference")
    assert set(found.values()) == {"pass", "not_applicable"}
    assert found["bn.infer.output"] == "pass"


def test_a_wrong_epsilon_attribute_fails_against_the_stated_configuration(
    tmp_path: Path,
) -> None:
    path = write_model(tmp_path / "wrong_eps.onnx", eps=1e-2)
    assert outcomes(load_target(path, "onnx"), "bn.infer.output")["bn.infer.output"] == "pass"
    stated = load_target(path + "#bn1(eps=1e-5)", "onnx")
    assert any("the node holds epsilon 0.00999" in w for w in stated.capabilities().warnings)
    found = outcomes(stated, "bn.infer.output", shrink_seconds=0.5)
    assert found["bn.infer.output"] == "fail"


@pytest.mark.parametrize("runtime", ["onnxruntime", "onnx.reference"])
def test_a_training_node_is_checked_in_both_modes(tmp_path: Path, runtime: str) -> None:
    path = write_model(tmp_path / "train.onnx", training=True)
    impl = load_target(f"{path}#bn1(runtime={runtime!r})", "onnx")
    assert impl.capabilities().training
    found = outcomes(impl, VALUE_CLAUSES)
    assert set(found.values()) == {"pass"}


@pytest.mark.parametrize(
    ("options", "name", "message"),
    [
        ({"nodes": 2}, "", "has 2 BatchNormalization nodes ('bn1', 'bn2'): name one"),
        ({}, "bn9", "has no BatchNormalization node 'bn9' (it has 'bn1')"),
        ({"computed_scale": True}, "bn1", "takes its scale from 'w_relu', which the file computes"),
    ],
)
def test_a_node_normspec_cannot_check_is_named_with_the_reason(
    tmp_path: Path, options: dict[str, Any], name: str, message: str
) -> None:
    path = write_model(tmp_path / "m.onnx", **options)
    with pytest.raises(TargetError, match=re.escape(message)):
        load_target(f"{path}#{name}" if name else path, "onnx")


def test_a_node_takes_only_its_own_arguments(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.onnx")
    with pytest.raises(TargetError, match="takes eps, momentum, runtime, not opset"):
        load_target(f"{path}#bn1(opset=9)", "onnx")
    with pytest.raises(TargetError, match="must be in \\[0, 1\\]"):
        load_target(f"{path}#bn1(momentum=1.5)", "onnx")
    with pytest.raises(TargetError, match="unknown ONNX runtime 'tvm'"):
        load_target(f"{path}#bn1(runtime='tvm')", "onnx")


# -- a third-party exporter's graph ----------------------------------------------------


def test_a_decomposed_graph_is_checked_and_eps_outside_the_root_is_caught() -> None:
    fixture = importlib.import_module("onnx_decomposed_bn")
    found = outcomes(fixture.decomposed, VALUE_CLAUSES)
    assert set(found.values()) == {"pass"}
    buggy = outcomes(fixture.eps_outside_root, VALUE_CLAUSES, shrink_seconds=0.5)
    assert buggy["bn.train.output"] == buggy["bn.infer.output"] == "fail"
