"""A BatchNormalization node of a user's ``.onnx`` file: ``normspec check model.onnx#Node``.

The node is checked as its file holds it, extracted as a one-node model: its opset (the
model's ai.onnx import), element types and attributes (``epsilon``, ``momentum``,
``spatial``) are the file's, and the initializers it takes as ``scale``, ``B``,
``input_mean`` and ``input_var`` are its initial values. The checks set the parameters and
running statistics, as a graph feeds them; they cannot set eps and momentum, which the node
holds: every case takes the node's (``Capabilities.held_setting``), and the clauses that
choose their own are not applicable, as are those of a new layer's initial values.

A target may state the configuration the node must hold,
``model.onnx#Node(eps=1e-05, momentum=0.9)`` (momentum in ONNX's convention, both as
float32 values): the cases take those, the node computes with its own, and an attribute
that differs fails the clauses that read it (bn.train.output, bn.infer.output,
bn.running.*). ``runtime="onnx.reference"`` runs the node with ONNX's reference evaluator
instead of onnxruntime. Without ``#Node``, the file's only BatchNormalization node.

A node in inference mode (``training_mode=0``, ``is_test=1``, or opsets 7 and 9 with the
output ``Y`` alone: what an exporter writes for a model in eval mode) is checked in
inference only (``Capabilities.training``); one in training mode in both modes, its
inference with the mode switched, as an eval export of the same model would have it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from normspec.adapters.onnx.op import (
    DTYPE_OF_ELEMENT,
    BatchNormNode,
    OnnxBatchNormalization,
    Runtime,
    mode_attribute,
    runtime_named,
    schema,
)
from normspec.adapters.protocol import Capabilities, DTypeName, LayerConfig, UnsupportedConfig

#: The target's constructor arguments.
ARGUMENTS = ("eps", "momentum", "runtime")
#: The node's inputs after ``X``, as the operator names them.
VECTOR_ROLES = ("scale", "B", "input_mean", "input_var")


@dataclass(frozen=True)
class FileNode:
    """What a file holds of one BatchNormalization node."""

    name: str
    node: BatchNormNode
    training: bool
    initial: tuple[np.ndarray, ...]
    rank: int | None

    def attribute(self, name: str) -> float:
        """The node's float attribute ``name``, or the schema's default."""
        held = dict(self.node.attributes).get(name)
        if held is None:
            held = schema(self.node.opset).attributes[name].default_value.f
        return float(held)


def _ai_onnx_opset(model: onnx.ModelProto) -> int:
    found = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not found:
        raise ValueError("the model imports no ai.onnx opset")
    return found[0]


def _element_types(model: onnx.ModelProto) -> dict[str, tuple[int, int | None]]:
    """Each typed value's element type and rank (``None`` if unknown), after shape
    inference where it succeeds: what the file says of the node's input."""
    with contextlib.suppress(Exception):  # where inference fails, the declared types serve
        model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    types: dict[str, tuple[int, int | None]] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        rank = len(tensor.shape.dim) if tensor.HasField("shape") else None
        types[info.name] = (tensor.elem_type, rank)
    for initializer in graph.initializer:
        types[initializer.name] = (initializer.data_type, len(initializer.dims))
    return types


def _held_tensor(graph: onnx.GraphProto, name: str, what: str) -> onnx.TensorProto:
    """The tensor the file holds as the value ``name``: an initializer, or a Constant
    node's value, through Identity nodes (torch's exporter shares equal initializers so)."""
    initializers = {i.name: i for i in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    seen = name
    while seen not in initializers:
        producer = producers.get(seen)
        if producer is not None and producer.op_type == "Identity":
            seen = producer.input[0]
            continue
        if producer is not None and producer.op_type == "Constant":
            value = next((a for a in producer.attribute if a.name == "value"), None)
            if value is not None:
                return value.t
        raise ValueError(
            f"{what}, which the file computes instead of holding (an initializer or a "
            "Constant): normspec checks a node whose parameters the file holds"
        )
    return initializers[seen]


def _dtype(element: int, what: str) -> DTypeName:
    if element not in DTYPE_OF_ELEMENT:
        name = onnx.TensorProto.DataType.Name(element)
        raise ValueError(f"{what} has element type {name}, which normspec does not check")
    return DTYPE_OF_ELEMENT[element]


def _choose(nodes: list[onnx.NodeProto], name: str, location: str) -> onnx.NodeProto:
    names = ", ".join(repr(n.name) for n in nodes) or "none"
    if name:
        chosen = [n for n in nodes if n.name == name]
        if not chosen:
            raise ValueError(f"{location} has no BatchNormalization node {name!r} (it has {names})")
        return chosen[0]
    if len(nodes) != 1:
        raise ValueError(
            f"{location} has {len(nodes)} BatchNormalization nodes ({names}): name one, "
            f"{location}#NAME"
        )
    return nodes[0]


def _in_training(node: onnx.NodeProto, opset: int, attributes: Mapping[str, Any]) -> bool:
    mode = mode_attribute(opset)
    if mode == "training_mode":
        return bool(attributes.get(mode, 0))
    if mode == "is_test":
        return not attributes.get(mode, 0)
    return len([o for o in node.output if o]) > 1


def read_node(location: str, name: str) -> FileNode:
    """The BatchNormalization node ``name`` of the ONNX file at ``location`` (its only
    one if ``name`` is empty); ``ValueError`` naming what the file lacks."""
    if not Path(location).is_file():
        raise ValueError(f"no file {location}")
    try:
        model = onnx.load(location)
    except Exception as problem:  # not a model: protobuf's DecodeError, or an external file
        raise ValueError(f"{location} is not an ONNX model: {problem}") from None
    nodes = [
        n
        for n in model.graph.node
        if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx")
    ]
    node = _choose(nodes, name, location)
    opset = _ai_onnx_opset(model)
    types = _element_types(model)
    roles = list(zip(VECTOR_ROLES, node.input[1:5], strict=True))
    held = [
        _held_tensor(model.graph, value, f"node {node.name!r} takes its {role} from {value!r}")
        for role, value in roles
    ]
    vector_dtypes = tuple(
        _dtype(tensor.data_type, f"{role} {value!r}")
        for (role, value), tensor in zip(roles, held, strict=True)
    )
    x_type, rank = types.get(node.input[0], (0, None))
    dtype = _dtype(x_type, f"input {node.input[0]!r}") if x_type else vector_dtypes[0]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    training = _in_training(node, opset, attributes)
    kept = tuple(sorted((k, v) for k, v in attributes.items() if k != mode_attribute(opset)))
    return FileNode(
        name=node.name,
        node=BatchNormNode(opset, dtype, vector_dtypes, kept),
        training=training,
        initial=tuple(numpy_helper.to_array(tensor) for tensor in held),
        rank=rank,
    )


def _held(value: object, what: str) -> float:
    """A stated eps or momentum as the float32 value the node would hold."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number, not {value!r}")
    return float(np.float32(value))


class OnnxFileNode(OnnxBatchNormalization):
    """One BatchNormalization node of a file, run by a runtime (see the module docstring)."""

    def __init__(
        self, location: str, found: FileNode, runtime: Runtime, held: tuple[float, float]
    ) -> None:
        super().__init__(runtime, found.node.opset)
        self.found = found
        self.held = held
        since = schema(found.node.opset).since_version
        self.name = f"{location}#{found.name} (BatchNormalization-{since} on {runtime.name})"
        self.library = f"{location}#{found.name}"

    def node(self, config: LayerConfig) -> BatchNormNode:
        """The file's node; :class:`UnsupportedConfig` for eps or momentum it does not hold."""
        if (config.eps, config.momentum) != self.held:
            eps, momentum = self.held
            raise UnsupportedConfig(
                f"{self.library} is checked with eps {eps!r} and momentum {momentum!r}, "
                f"not eps {config.eps!r} and momentum {config.momentum!r}"
            )
        return self.found.node

    def initial(self, node: BatchNormNode, num_features: int) -> list[np.ndarray]:
        """The file's initializers (whatever their length: the checks set every vector)."""
        return list(self.found.initial)

    def base_capabilities(self) -> Capabilities:
        found = self.found
        eps, momentum = self.held
        notes = dict(self.supports.notes)
        node_eps, node_momentum = found.attribute("epsilon"), found.attribute("momentum")
        held = f"eps {eps!r} and momentum {momentum!r}"
        if (node_eps, node_momentum) == self.held:
            setting = f"{self.library} is checked with the float32 attributes it holds: {held}"
        else:
            setting = (
                f"{self.library} is checked against {held}, as the target states (float32); "
                f"the node holds epsilon {node_eps!r} and momentum {node_momentum!r}"
            )
        warnings = [setting]
        if found.training:
            warnings.append(
                f"{self.library} runs in training mode in its file; its inference is checked "
                "with the mode switched, as an eval export of the model would have it"
            )
        else:
            notes["training"] = (
                "the node runs in inference mode in its file, as an exporter writes a model "
                "in eval mode"
            )
        notes["chosen_settings"] = (
            f"the node holds eps {eps!r} and momentum {momentum!r}; no check chooses others"
        )
        notes["fresh_layers"] = "the node starts from the values its file holds"
        base = replace(
            self.supports,
            dtypes=frozenset({found.node.dtype}),
            training=found.training,
            held_setting=self.held,
            notes=notes,
            warnings=tuple(warnings),
        )
        return base if found.rank is None else replace(base, ranks=frozenset({found.rank}))


def load_node(path: str, profile: str, arguments: Mapping[str, Any]) -> OnnxFileNode:
    """The target ``path/model.onnx#Node(eps=..., momentum=..., runtime=...)`` (declared in
    :mod:`normspec.adapters.onnx`); ``ValueError`` for a file or node it cannot check."""
    unknown = sorted(set(arguments) - set(ARGUMENTS))
    if unknown:
        raise ValueError(f"an ONNX node takes {', '.join(ARGUMENTS)}, not {', '.join(unknown)}")
    location, _, name = path.partition("#")
    found = read_node(location, name)
    runtime = runtime_named(str(arguments.get("runtime", "onnxruntime")))
    eps = _held(arguments.get("eps", found.attribute("epsilon")), "eps")
    momentum = _held(arguments.get("momentum", found.attribute("momentum")), "momentum")
    if not eps > 0:
        raise ValueError(f"node {found.name!r} is checked with eps {eps!r}: it must be positive")
    if not 0 <= momentum <= 1:
        raise ValueError(
            f"node {found.name!r} is checked with momentum {momentum!r}: it must be in [0, 1]"
        )
    return OnnxFileNode(location, found, runtime, (eps, momentum))
