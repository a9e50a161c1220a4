"""An ONNX graph being rewritten node by node (the QONNX and QDQ frontends' shared machinery).

`GraphEdit` walks the original nodes in order; a rewrite either keeps a node, replaces it by
standard ONNX nodes that write the same output name (`emit`), or folds it into a constant
(`fold`). `finish` returns the rewritten model with initializers, graph inputs and opset
imports nobody uses any more removed. Constants are initializers and `Constant` nodes, read as
numpy arrays (INT4/UINT4/INT2/UINT2 come back as the ml_dtypes types onnx uses).
"""

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

LAYER_OPS = ("Conv", "Gemm", "MatMul")
# ops whose every output value is one of their first input's values (MaxPool pads with −inf,
# which is never picked), so a tensor of scale·q values stays one after them
VALUE_PRESERVING_OPS = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "MaxPool", "Dropout")


def node_name(node: onnx.NodeProto) -> str:
    """The name tvmbits uses for a node: its own name, else its first output's."""
    return node.name or node.output[0]


class GraphEdit:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        graph = model.graph
        self.constants: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer
        }
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for node in graph.node:
            for index, name in enumerate(node.input):
                self.consumers[name].append((node, index))
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
        self.nodes: list[onnx.NodeProto] = []
        self._initializers: list[onnx.TensorProto] = []
        self._names = {init.name for init in graph.initializer} | set(self.producer)
        self._names |= {value.name for value in graph.input}

    def constant_of(self, name: str) -> np.ndarray | None:
        return self.constants.get(name) if name else None

    def fresh(self, hint: str) -> str:
        name, i = hint, 0
        while name in self._names:
            i += 1
            name = f"{hint}_{i}"
        self._names.add(name)
        return name

    def const(self, hint: str, value) -> str:
        """A new initializer holding `value` (float32 unless it has another numpy dtype)."""
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self.fresh(hint)
        self._initializers.append(numpy_helper.from_array(array, name))
        return name

    def emit(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        """Append a standard ONNX node; returns its output name (fresh unless given)."""
        output = output or self.fresh(f"{inputs[0]}_{op_type.lower()}")
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=self.fresh(output), **attrs))
        return output

    def clip(self, x: str, lo: float, hi: float) -> str:
        """min(max(x, lo), hi) for scalar bounds, as the model's opset spells Clip."""
        if self.opset >= 11:
            return self.emit("Clip", [x, self.const("lo", np.float32(lo)), self.const("hi", np.float32(hi))])
        return self.emit("Clip", [x], min=float(lo), max=float(hi))

    def fold(self, output: str, value: np.ndarray) -> None:
        """Make `output` an initializer holding `value` instead of a node's result."""
        self.constants[output] = value
        self._initializers.append(numpy_helper.from_array(np.asarray(value), output))

    def keep(self, node: onnx.NodeProto) -> None:
        self.nodes.append(node)

    def source_through_value_preserving(self, name: str) -> str:
        """Follow `name` back through VALUE_PRESERVING_OPS (first inputs) to where it is made."""
        node = self.producer.get(name)
        while node is not None and node.op_type in VALUE_PRESERVING_OPS:
            name = node.input[0]
            node = self.producer.get(name)
        return name

    def finish(self, drop_domains: tuple[str, ...]) -> onnx.ModelProto:
        """The rewritten model; `drop_domains` are opset imports to drop once no node uses them."""
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        graph = model.graph
        del graph.node[:]
        graph.node.extend(self.nodes)
        used = {name for node in self.nodes for name in node.input} | {o.name for o in graph.output}
        originals = {init.name for init in graph.initializer}
        kept = [init for init in [*graph.initializer, *self._initializers] if init.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        # IR < 4 and some exporters list initializers as graph inputs too: keep those still used
        inputs = [v for v in graph.input if v.name not in originals or v.name in used]
        del graph.input[:]
        graph.input.extend(inputs)
        remaining = {node.domain for node in self.nodes}
        opsets = [o for o in model.opset_import if o.domain not in drop_domains or o.domain in remaining]
        del model.opset_import[:]
        model.opset_import.extend(opsets)
        return model
