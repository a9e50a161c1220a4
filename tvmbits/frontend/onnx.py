"""ONNX models into Relax: float ONNX as is, QONNX and QDQ quantizers rewritten first.

`qonnx.rewrite` and `qdq.rewrite` replace the quantizers by standard ONNX ops computing the
same float values and return the quantization facts per layer (`ImportedModel.facts`).
The Relax module keeps the ONNX graph's input names, constant weights bound in the module
(not function parameters), and NCHW layouts as ONNX has them; each Conv, Gemm and MatMul
node's layer call is bound to a variable named after the node (`relax_import.py`), and
`layer_names` lists those names in graph order. Layer nodes get unique names first: an unnamed
node takes its first output's name, a repeated name gets its first output's name appended.
"""

import contextlib
import gc
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

from tvmbits.errors import ModelError
from tvmbits.frontend import qdq, qonnx
from tvmbits.frontend.facts import LayerFacts
from tvmbits.frontend.graph_edit import LAYER_OPS, node_name
from tvmbits.frontend.relax_import import from_onnx

INT32_MAX = 2**31 - 1  # TVM indexes tensors with int32 unless told otherwise


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


def load(path: str | Path, log: Callable[[str], None] = lambda message: None) -> onnx.ModelProto:
    """Read and check an ONNX file; every failure is a one-line UserError naming the file.

    Tensors stored as external data are read from files inside the model's folder only; an
    opset newer than the installed onnx package knows is read, with a warning."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RecursionError) as err:
        raise ModelError(f"{path}: not an ONNX model ({type(err).__name__})") from None
    if model.graph.node:
        load_external_data(model, path)
    return check(model, str(path), log)


def check(model: onnx.ModelProto, source: str, log: Callable[[str], None] = lambda message: None) -> onnx.ModelProto:
    """`model`, after ONNX's checker and the opset check; a failure is a one-line ModelError
    naming `source`."""
    if not model.graph.node:
        raise ModelError(f"{source}: not an ONNX model (no graph nodes)")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RecursionError) as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelError(f"{source}: invalid ONNX model: {first_line}") from None
    check_opset(model, source, log)
    return model


def load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Read the tensors `model` keeps in external files; each file must exist inside the model's
    folder (a location that leaves it, e.g. `../secret` or an absolute path, is refused)."""
    folder = path.absolute().parent.resolve()
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        data = (folder / location).resolve()
        if not location or os.path.isabs(location) or not data.is_relative_to(folder):
            raise ModelError(
                f"{path}: tensor '{tensor.name}' keeps its data at '{location}', outside the model's folder; refused"
            )
        if not data.is_file():
            raise ModelError(f"{path}: tensor '{tensor.name}': its external data file {data} does not exist")
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
            size = data.stat().st_size
            if offset < 0 or offset > size or (length >= 0 and offset + length > size):
                raise ValueError("offset/length beyond the end of the file")
            external_data_helper.load_external_data_for_tensor(tensor, str(folder))
        except (OSError, ValueError) as err:
            raise ModelError(f"{path}: tensor '{tensor.name}': cannot read its external data {data} ({err})") from None


def check_opset(model: onnx.ModelProto, path: "Path | str", log: Callable[[str], None]) -> None:
    """Warn when the model's ONNX opset is newer than the installed onnx package knows: its ops
    are then read with the newest meaning this onnx (and TVM's importer) has."""
    known = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > known:
            log(
                f"warning: {path}: ONNX opset {opset.version} is newer than this onnx package knows "
                f"({onnx.__version__}: opset {known}); its ops are read as opset {known} defines them"
            )


def import_model(
    model: onnx.ModelProto, source: str, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> ImportedModel:
    """Import `model` (read from `source`) into Relax with constants bound.

    `input_shapes` fixes graph inputs whose ONNX shape has symbolic dimensions.
    """
    model = name_layers(model, source)
    model, facts = qonnx.rewrite(model, source)
    model, qdq_facts = qdq.rewrite(model, source)
    facts.update(qdq_facts)
    _check_supported(model, source)
    inputs = _input_specs(model, source, input_shapes or {})
    model = explicit_same_padding(model, inputs)
    message = None
    with _captured_output() as said:
        try:
            mod = from_onnx(
                model,
                shape_dict={spec.name: list(spec.shape) for spec in inputs},
                dtype_dict={spec.name: spec.dtype for spec in inputs},
            )
        except Exception as err:  # the importer raises bare Exception/ValueError/TVMError alike
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            del err
            gc.collect()  # TVM's BlockBuilder warns when it is destroyed: let it say so here
    if message is not None:
        detail = (said.text + f"\n{message}").strip()
        raise ModelError(f"{source}: TVM's ONNX importer failed: {message}", detail=detail)
    mod = relax.transform.FoldConstant()(mod)
    return ImportedModel(mod, inputs, _output_specs(mod, model), _layer_names(model), facts)


def name_layers(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    """A copy of `model` whose Conv/Gemm/MatMul nodes have unique, non-empty names."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    seen = set()
    for index, node in enumerate(model.graph.node):
        if node.op_type not in LAYER_OPS:
            continue
        try:
            name = node_name(node)
            if name in seen:
                name = f"{name}:{node.output[0]}"
            node.name = name
        except (UnicodeError, IndexError):
            raise ModelError(f"{source}: {node.op_type} node {index} has no valid UTF-8 name or output") from None
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
            check_input_shape(f"--input-shape {value.name}", shape)
        else:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
            if None in dims:
                raise ModelError(
                    f"{source}: input '{value.name}' has symbolic dimensions; "
                    f"give them with --input-shape {value.name}=D1,D2,..."
                )
            shape = tuple(dims)
            check_input_shape(f"{source}: input '{value.name}'", shape)
        specs.append(TensorSpec(value.name, shape, dtype))
    unknown = set(input_shapes) - {spec.name for spec in specs}
    if unknown:
        raise ModelError(f"{source}: --input-shape names no graph input: {', '.join(sorted(unknown))}")
    return specs


def explicit_same_padding(model: onnx.ModelProto, inputs: list[TensorSpec]) -> onnx.ModelProto:
    """Conv nodes with `auto_pad` SAME_UPPER/SAME_LOWER rewritten to the explicit `pads` they
    stand for, where the input's spatial shape is known. TVM's importer lowers SAME padding to a
    separate `pad` op before the convolution, which hides a `Sign` feeding the convolution (and
    pads with 0, which a bipolar tensor cannot hold); explicit pads keep `Sign → conv` one layer
    with exact zero padding, the same numbers."""
    if not any(n.op_type == "Conv" and _auto_pad(n).startswith("SAME") for n in model.graph.node):
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:
        spec = next((spec for spec in inputs if spec.name == value.name), None)
        if spec is not None:  # --input-shape may fix symbolic dimensions
            dims = value.type.tensor_type.shape.dim
            for dim, extent in zip(dims, spec.shape):
                dim.Clear()
                dim.dim_value = extent
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort here; the importer pads as before
        return model
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input]:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    kernels = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        mode = _auto_pad(node)
        if node.op_type != "Conv" or not mode.startswith("SAME"):
            continue
        shape, kernel = shapes.get(node.input[0]), kernels.get(node.input[1], shapes.get(node.input[1]))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        spatial = None if shape is None else shape[2:]
        kernel = attrs.get("kernel_shape") or (kernel[2:] if kernel else None)
        if not spatial or not kernel or len(kernel) != len(spatial):
            continue
        strides = attrs.get("strides") or [1] * len(spatial)
        dilations = attrs.get("dilations") or [1] * len(spatial)
        begins, ends = [], []
        for extent, k, stride, dilation in zip(spatial, kernel, strides, dilations):
            out = -(-extent // stride)
            total = max(0, (out - 1) * stride + (k - 1) * dilation + 1 - extent)
            small, large = total // 2, total - total // 2
            begins.append(small if mode == "SAME_UPPER" else large)
            ends.append(large if mode == "SAME_UPPER" else small)
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(onnx.helper.make_attribute("pads", begins + ends))
    return model


def _auto_pad(node: onnx.NodeProto) -> str:
    for attribute in node.attribute:
        if attribute.name == "auto_pad":
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else str(value)
    return "NOTSET"


def check_input_shape(what: str, shape: tuple[int, ...]) -> None:
    """Refuse a shape with an empty dimension (0 channels, 0 pixels) or more elements than
    TVM's int32 indexing can address."""
    if any(d < 1 for d in shape):
        raise ModelError(f"{what} has shape {list(shape)}: every dimension must be at least 1")
    if math.prod(shape) > INT32_MAX:
        raise ModelError(
            f"{what} has shape {list(shape)}: {math.prod(shape)} elements, more than TVM's int32 "
            f"indexing addresses ({INT32_MAX})"
        )


class _Said:
    text = ""


@contextlib.contextmanager
def _captured_output():
    """Hold what is written to stdout and stderr (Python's and the C++ runtime's file
    descriptors 1 and 2) in `said.text` instead of printing it."""
    said = _Said()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(sys.__stdout__), contextlib.redirect_stderr(sys.__stdout__):
                yield said
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            sys.__stdout__.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            said.text = sink.read().decode(errors="replace")


def _output_specs(mod, model) -> list[TensorSpec]:
    ret = mod["main"].ret_ty
    fields = ret.fields if isinstance(ret, relax.TupleType) else [ret]
    return [
        TensorSpec(value.name, tuple(int(d) for d in field.shape), str(field.dtype))
        for value, field in zip(model.graph.output, fields)
    ]


def _layer_names(model) -> list[str]:
    return [node_name(node) for node in model.graph.node if node.op_type in LAYER_OPS]
