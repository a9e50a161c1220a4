"""ONNX models into Relax: float ONNX as is, QONNX and QDQ quantizers rewritten first.

`qonnx.rewrite` and `qdq.rewrite` replace the quantizers by standard ONNX ops computing the
same float values and return the quantization facts per layer (`ImportedModel.facts`).
The Relax module keeps the ONNX graph's input names, constant weights bound in the module
(not function parameters), and NCHW layouts as ONNX has them; each Conv, Gemm and MatMul
node's layer call is bound to a variable named after the node (`relax_import.py`), and
`layer_names` lists those names in graph order. Layer nodes get unique names first: an unnamed
node takes its first output's name, a repeated name gets its first output's name appended.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

from tvmbits.errors import ModelError
from tvmbits.frontend import qdq, qonnx
from tvmbits.frontend.facts import LayerFacts
from tvmbits.frontend.graph_edit import LAYER_OPS, node_name
from tvmbits.frontend.relax_import import from_onnx


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class ImportedModel:
    mod: "tvm.IRModule"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    layer_names: list[str]
    facts: dict[str, LayerFacts] = field(default_factory=dict)  # by layer name


def load(path: str | Path) -> onnx.ModelProto:
    """Read and check an ONNX file; every failure is a one-line UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, OSError) as err:
        raise ModelError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    return check(model, str(path))


def check(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """`model`, after ONNX's checker; a failure is a one-line ModelError naming `source`."""
    if not model.graph.node:
        raise ModelError(f"{source}: not an ONNX model (no graph nodes)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first_line = str(err).strip().splitlines()[0]
        raise ModelError(f"{source}: invalid ONNX model: {first_line}") from None
    return model


def import_model(
    model: onnx.ModelProto, source: str, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> ImportedModel:
    """Import `model` (read from `source`) into Relax with constants bound.

    `input_shapes` fixes graph inputs whose ONNX shape has symbolic dimensions.
    """
    model = name_layers(model)
    model, facts = qonnx.rewrite(model, source)
    model, qdq_facts = qdq.rewrite(model, source)
    facts.update(qdq_facts)
    _check_supported(model, source)
    inputs = _input_specs(model, source, input_shapes or {})
    try:
        mod = from_onnx(
            model,
            shape_dict={spec.name: list(spec.shape) for spec in inputs},
            dtype_dict={spec.name: spec.dtype for spec in inputs},
        )
    except Exception as err:  # the importer raises bare Exception/ValueError/TVMError alike
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{source}: TVM's ONNX importer failed: {message}") from None
    mod = relax.transform.FoldConstant()(mod)
    return ImportedModel(mod, inputs, _output_specs(mod, model), _layer_names(model), facts)


def name_layers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose Conv/Gemm/MatMul nodes have unique, non-empty names."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    seen = set()
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS:
            continue
        name = node_name(node)
        if name in seen:
            name = f"{name}:{node.output[0]}"
        node.name = name
        seen.add(name)
    return model


def _check_supported(model: onnx.ModelProto, source: str) -> None:
    supported = _get_convert_map()
    for node in model.graph.node:
        if node.op_type not in supported and node.op_type not in ("Constant", "If"):
            domain = f" (domain {node.domain})" if node.domain else ""
            raise ModelError(
                f"{source}: node '{node.name or node.output[0]}' uses op {node.op_type}{domain}, "
                "which TVM's ONNX importer does not support"
            )


def _input_specs(model, source, input_shapes) -> list[TensorSpec]:
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        if value.name in input_shapes:
            shape = tuple(input_shapes[value.name])
        else:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
            if None in dims:
                raise ModelError(
                    f"{source}: input '{value.name}' has symbolic dimensions; "
                    f"give them with --input-shape {value.name}=D1,D2,..."
                )
            shape = tuple(dims)
        specs.append(TensorSpec(value.name, shape, dtype))
    unknown = set(input_shapes) - {spec.name for spec in specs}
    if unknown:
        raise ModelError(f"{source}: --input-shape names no graph input: {', '.join(sorted(unknown))}")
    return specs


def _output_specs(mod, model) -> list[TensorSpec]:
    ret = mod["main"].ret_ty
    fields = ret.fields if isinstance(ret, relax.TupleType) else [ret]
    return [
        TensorSpec(value.name, tuple(int(d) for d in field.shape), str(field.dtype))
        for value, field in zip(model.graph.output, fields)
    ]


def _layer_names(model) -> list[str]:
    return [node_name(node) for node in model.graph.node if node.op_type in LAYER_OPS]


def random_inputs(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs (integers drawn from 0..9 for integer inputs)."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        if np.issubdtype(np.dtype(spec.dtype), np.floating):
            out[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.integers(0, 10, spec.shape).astype(spec.dtype)
    return out
