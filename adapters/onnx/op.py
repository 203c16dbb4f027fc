"""ONNX ``BatchNormalization``, every opset of it, run by ``onnx.reference`` and ``onnxruntime``.

A layer is one ``BatchNormalization`` node in a one-node model whose five inputs (``X``,
``scale``, ``B``, ``input_mean``, ``input_var``) are fed at every call, as a graph feeds
them: the layer keeps the parameters and running statistics as the values it feeds, and a
training call keeps the running statistics the node returns. The mode is the opset's own
(from the operator schema): ``is_test`` (opset 6), the training outputs ``mean, var,
saved_mean, saved_var`` (opsets 7 and 9), or ``training_mode`` (opsets 14 and 15).

Dialect (the operator's documentation, ``onnx.defs.get_schema("BatchNormalization", 15)``,
and ``onnx/reference/ops/op_batch_normalization.py``): ``running_mean = input_mean *
momentum + current_mean * (1 - momentum)``, ``current_var`` the population (biased)
variance: momentum is the decay ``1 - alpha``, the running variance biased, epsilon 1e-5,
momentum 0.9: the profile ``onnx``. There is no cumulative average, no step counter, no
layer without ``scale`` and ``B`` and none without running statistics, and no backward (an
inference graph has no gradient; training graphs belong to onnxruntime-training). The model
keeps ``epsilon`` and ``momentum`` as float32 attributes: each case's eps and momentum are
float32 values, the configuration the model holds (``Capabilities.setting_dtype``). The
element types are the schema's (bfloat16 from opset 14); those a runtime has no kernel for
are not applicable, with its error. A model is built once per opset, dtype, attributes and
mode, and loaded once per runtime.

Built-in targets: ``onnx.reference`` and ``onnxruntime`` (opset 15), and
``onnxruntime(opset=9)`` for another opset.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, defs, helper

from normspec.adapters.framework import FrameworkAdapter, VectorName
from normspec.adapters.protocol import Capabilities, DTypeName, LayerConfig

#: The opsets in which BatchNormalization changed.
OPSETS = (6, 7, 9, 14, 15)
LATEST_OPSET = OPSETS[-1]
#: The node's inputs, in order.
INPUTS = ("X", "scale", "B", "input_mean", "input_var")
#: The vector each input after ``X`` holds.
VECTOR_INPUTS: dict[VectorName, str] = {
    "gamma": "scale",
    "beta": "B",
    "mean": "input_mean",
    "var": "input_var",
}

ELEMENT_TYPES: dict[DTypeName, int] = {
    "float64": TensorProto.DOUBLE,
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
}
DTYPE_OF_ELEMENT = {element: name for name, element in ELEMENT_TYPES.items()}
NUMPY_TYPES: dict[DTypeName, Any] = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
}
SCHEMA_TYPES: dict[str, DTypeName] = {
    "tensor(double)": "float64",
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
}

#: A loaded model: its outputs for the feeds.
Run = Callable[[Mapping[str, np.ndarray]], Sequence[Any]]


def schema(opset: int) -> defs.OpSchema:
    """The BatchNormalization schema in force at ``opset``."""
    return defs.get_schema("BatchNormalization", opset)


def schema_dtypes(opset: int) -> frozenset[DTypeName]:
    """The element types the operator takes for ``X`` at ``opset``."""
    constraint = next(c for c in schema(opset).type_constraints if c.type_param_str == "T")
    return frozenset(SCHEMA_TYPES[t] for t in constraint.allowed_type_strs if t in SCHEMA_TYPES)


def mode_attribute(opset: int) -> str | None:
    """The attribute that selects the mode (``is_test``, ``training_mode``), or ``None``
    where the outputs do (opsets 7 and 9)."""
    attributes = schema(opset).attributes
    return next((name for name in ("training_mode", "is_test") if name in attributes), None)


def mode_attributes(opset: int, training: bool) -> dict[str, int]:
    """The mode attribute's value for ``training``."""
    name = mode_attribute(opset)
    if name is None:
        return {}
    return {name: int(training if name == "training_mode" else not training)}


def mode_outputs(opset: int, training: bool) -> tuple[str, ...]:
    """The node's outputs: ``Y`` in inference, every output of the schema in training."""
    return tuple(o.name for o in schema(opset).outputs) if training else ("Y",)


@dataclass(frozen=True)
class BatchNormNode:
    """One BatchNormalization node as a model holds it.

    ``opset``: the model's ai.onnx opset; ``dtype``: the element type of ``X`` and ``Y``;
    ``vector_dtypes``: those of ``scale``, ``B``, ``input_mean``, ``input_var``;
    ``attributes``: its attributes but the mode's (``epsilon`` and ``momentum``, kept as
    float32, and ``spatial`` where a file sets it).
    """

    opset: int
    dtype: DTypeName
    vector_dtypes: tuple[DTypeName, ...]
    attributes: tuple[tuple[str, float | int], ...]

    @classmethod
    def of(cls, opset: int, dtype: DTypeName, eps: float, momentum: float | None) -> BatchNormNode:
        """A node of ``opset`` whose tensors are all ``dtype``, with these attributes."""
        attributes: dict[str, float] = {"epsilon": eps}
        if momentum is not None:
            attributes["momentum"] = momentum
        return cls(opset, dtype, (dtype,) * 4, tuple(attributes.items()))

    def output_dtypes(self, training: bool) -> dict[str, DTypeName]:
        """The element type of each output of a call: the running statistics' are those of
        ``input_mean`` and ``input_var``, every other that of ``X``."""
        outputs = mode_outputs(self.opset, training)
        types = dict.fromkeys(outputs, self.dtype)
        if training:
            types.update(zip(outputs[1:3], self.vector_dtypes[2:], strict=True))
        return types

    def model(self, training: bool) -> onnx.ModelProto:
        """The one-node model of a training or inference call."""
        outputs = self.output_dtypes(training)
        node = helper.make_node(
            "BatchNormalization", list(INPUTS), list(outputs), name="BatchNormalization"
        )
        attributes = {**dict(self.attributes), **mode_attributes(self.opset, training)}
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attributes.items())
        graph = helper.make_graph(
            [node],
            f"BatchNormalization-{self.opset}",
            [
                helper.make_tensor_value_info(name, ELEMENT_TYPES[t], None)
                for name, t in zip(INPUTS, (self.dtype, *self.vector_dtypes), strict=True)
            ],
            [helper.make_tensor_value_info(n, ELEMENT_TYPES[t], None) for n, t in outputs.items()],
        )
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="normspec")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model


class Runtime(abc.ABC):
    """What runs an ONNX model: one loaded model is a function of its feeds."""

    #: the target name, and the library named in messages
    name: str

    @abc.abstractmethod
    def load(self, model: onnx.ModelProto) -> Run:
        """The model, ready to run; raises if the runtime cannot run it."""

    @abc.abstractmethod
    def versions(self) -> dict[str, str]:
        """The libraries it runs on, for the report."""


class ReferenceRuntime(Runtime):
    """``onnx.reference.ReferenceEvaluator``: ONNX's own Python evaluation of the operators."""

    name = "onnx.reference"

    def load(self, model: onnx.ModelProto) -> Run:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(model)

        def run(feeds: Mapping[str, np.ndarray]) -> Sequence[Any]:
            outputs = evaluator.run(None, dict(feeds))
            assert isinstance(outputs, list), "the evaluator returns a list for every output"
            return outputs

        return run

    def versions(self) -> dict[str, str]:
        return {"onnx": onnx.__version__, "numpy": np.__version__}


class OnnxRuntime(Runtime):
    """``onnxruntime.InferenceSession`` on the CPU provider, its log kept to fatal errors
    (an error is raised all the same, and reported as the call's)."""

    name = "onnxruntime"

    def __init__(self) -> None:
        import onnxruntime

        self.onnxruntime = onnxruntime
        self.run_options = onnxruntime.RunOptions()
        self.run_options.log_severity_level = 4

    def load(self, model: onnx.ModelProto) -> Run:
        options = self.onnxruntime.SessionOptions()
        options.log_severity_level = 4
        session = self.onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return lambda feeds: session.run(None, dict(feeds), self.run_options)

    def versions(self) -> dict[str, str]:
        return {
            "onnxruntime": self.onnxruntime.__version__,
            "onnx": onnx.__version__,
            "numpy": np.__version__,
            "device": "CPU",
        }


RUNTIMES: dict[str, type[Runtime]] = {
    ReferenceRuntime.name: ReferenceRuntime,
    OnnxRuntime.name: OnnxRuntime,
}


def runtime_named(name: str) -> Runtime:
    """The runtime called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown ONNX runtime {name!r} (known: {', '.join(RUNTIMES)})")
    return RUNTIMES[name]()


@dataclass
class NodeLayer:
    """A node and the values a graph feeds it (``scale``, ``B``, ``input_mean``,
    ``input_var``); a training call keeps the running statistics the node returns."""

    node: BatchNormNode
    load: Callable[[BatchNormNode, bool], Run]
    scale: np.ndarray
    B: np.ndarray
    input_mean: np.ndarray
    input_var: np.ndarray

    def __call__(self, x: np.ndarray, *, training: bool) -> Any:
        vectors = (self.scale, self.B, self.input_mean, self.input_var)
        outputs = self.load(self.node, training)(dict(zip(INPUTS, (x, *vectors), strict=True)))
        if not training:
            return outputs[0]
        y, self.input_mean, self.input_var = outputs[:3]
        return y


#: Why what ONNX's BatchNormalization lacks is not applicable.
NOTES = {
    "feature_axes": "BatchNormalization takes the features at axis 1 (N x C x D1 x ...)",
    "backward": "an ONNX inference graph has no gradient of BatchNormalization; training "
    "graphs are onnxruntime-training's",
    "untracked": "the node always takes input_mean and input_var",
    "without_affine": "the node always takes scale and B",
    "cumulative_average": "momentum is a float attribute",
    "step_counter": "the node keeps no step counter",
    "renorm": "ONNX has no batch renormalization",
    "fresh_layers": "an ONNX node starts from the values its model holds, which its exporter "
    "wrote, not from a constructor's",
}
#: How many loaded models an implementation keeps.
LOADED_MODELS = 64
#: How the float32 attributes are accounted for, in every report.
FLOAT32_SETTINGS = (
    "ONNX keeps epsilon and momentum as float32 attributes: each case's eps and momentum are "
    "float32 values (eps 1e-05 is checked as 9.99999974737875e-06), the configuration the "
    "model holds"
)


class OnnxBatchNormalization(FrameworkAdapter):
    """``BatchNormalization`` of one opset run by one runtime, in a model normspec writes.

    The dtypes are the schema's, less those the runtime cannot load a model of: the probe
    loads the models, and what a call does is the clauses' to judge.
    """

    supports = Capabilities(
        feature_axes=("first",),
        backward=False,
        untracked=False,
        without_affine=False,
        setting_dtype="float32",
        fresh_layers=False,
        notes=NOTES,
        warnings=(FLOAT32_SETTINGS,),
    )
    vectors = VECTOR_INPUTS

    def __init__(self, runtime: Runtime, opset: int = LATEST_OPSET) -> None:
        self.runtime = runtime
        self.opset = opset
        self.library = f"{runtime.name} (BatchNormalization-{opset})"
        self.name = f"ONNX BatchNormalization-{opset} on {runtime.name}"
        self._loaded: dict[tuple[BatchNormNode, bool], Run] = {}

    def node(self, config: LayerConfig) -> BatchNormNode:
        """The node a layer of ``config`` is."""
        return BatchNormNode.of(self.opset, config.dtype, config.eps, config.momentum)

    def initial(self, node: BatchNormNode, num_features: int) -> list[np.ndarray]:
        """``scale``, ``B``, ``input_mean``, ``input_var`` before any is set: those of a new
        torch module's export (ones, zeros, zeros, ones)."""
        ones, zeros = np.ones(num_features), np.zeros(num_features)
        return [
            values.astype(NUMPY_TYPES[dtype])
            for values, dtype in zip((ones, zeros, zeros, ones), node.vector_dtypes, strict=True)
        ]

    def model(self, node: BatchNormNode, training: bool) -> onnx.ModelProto:
        """The model a call in the mode runs: the node alone (a subclass may write another
        graph that computes it, as an exporter that decomposes the operator would)."""
        return node.model(training)

    def loaded(self, node: BatchNormNode, training: bool) -> Run:
        """The model of a call in the mode, loaded by the runtime once while it is among the
        :data:`LOADED_MODELS` used last (cases draw many momenta)."""
        key = (node, training)
        run = self._loaded.pop(key, None) or self.runtime.load(self.model(node, training))
        self._loaded[key] = run
        if len(self._loaded) > LOADED_MODELS:
            del self._loaded[next(iter(self._loaded))]
        return run

    # -- FrameworkAdapter --

    def base_capabilities(self) -> Capabilities:
        return replace(self.supports, dtypes=schema_dtypes(self.opset))

    def probed(self, base: Capabilities) -> Capabilities:
        """The probed capabilities; where the runtime loads no dtype, a warning says why."""
        found = super().probed(base)
        if found.dtypes or "dtypes" not in found.notes:
            return found
        why = f"{self.library} runs in no dtype: {found.notes['dtypes']}"
        return replace(found, warnings=(*found.warnings, why))

    def probe(self, config: LayerConfig, x: np.ndarray, base: Capabilities) -> str | None:
        """The runtime loads the models of a dtype (it has kernels for it)."""
        node = self.node(config)
        self.loaded(node, False)
        if base.training:
            self.loaded(node, True)
        return None

    def versions(self) -> Mapping[str, str]:
        return self.runtime.versions()

    def create(self, config: LayerConfig) -> NodeLayer:
        node = self.node(config)
        return NodeLayer(node, self.loaded, *self.initial(node, config.num_features))

    def to_framework(self, array: np.ndarray, dtype: DTypeName) -> np.ndarray:
        source = np.asarray(array, dtype=np.float64)
        return source if dtype == "float64" else source.astype(NUMPY_TYPES[dtype], order="K")

    def to_numpy(self, value: Any) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise TypeError(f"the runtime returned a {type(value).__name__}, not an array")
        return value

    def forward(self, layer: NodeLayer, x: np.ndarray, *, training: bool) -> Any:
        return layer(x, training=training)


def checked_opset(opset: object) -> int:
    """``opset`` if BatchNormalization changed at it; ``ValueError`` otherwise."""
    if not isinstance(opset, int) or isinstance(opset, bool) or opset not in OPSETS:
        raise ValueError(
            f"opset {opset!r}: BatchNormalization is defined at opsets "
            f"{', '.join(map(str, OPSETS))}"
        )
    return opset


def reference_evaluator(
    profile: str = "onnx", *, opset: int = LATEST_OPSET
) -> OnnxBatchNormalization:
    """Built-in target ``onnx.reference``: ``onnx.reference(opset=9)`` for another opset."""
    return OnnxBatchNormalization(ReferenceRuntime(), checked_opset(opset))


def onnxruntime_cpu(profile: str = "onnx", *, opset: int = LATEST_OPSET) -> OnnxBatchNormalization:
    """Built-in target ``onnxruntime``: ``onnxruntime(opset=9)`` for another opset."""
    return OnnxBatchNormalization(OnnxRuntime(), checked_opset(opset))
