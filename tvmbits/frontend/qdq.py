"""ONNX QDQ models (QuantizeLinear / DequantizeLinear, e.g. ONNX Runtime's `quantize_static`)
into float ONNX plus quantization facts, for every integer type the installed onnx has:
INT8/UINT8, INT16/UINT16, INT32 (biases), INT4/UINT4 (opset 21) and INT2/UINT2 (opset 25).
ONNX Runtime's `com.microsoft` Q/DQ (its int4/int16 before opset 21) are read the same way.

Semantics (the ONNX operator specs, as ONNX Runtime computes them in float32):
- QuantizeLinear(x, s, zp): q = saturate(round_half_even(x / s) + zp) to the range of zp's
  type (or of `output_dtype`, else uint8).
- DequantizeLinear(q, s, zp): x = float32(q − zp) · s.
Scales and zero points are per tensor, per `axis`, or per block of `block_size` along `axis`.

Rewrites, each computing the same float32 values:
- DequantizeLinear of a constant (weights, biases; also of a QuantizeLinear of a constant whose
  every consumer is a DequantizeLinear) is folded into a float constant.
- A QuantizeLinear whose every consumer is a DequantizeLinear (an activation's Q→DQ pair)
  becomes Div, Round, Add, Clip (the integer q, held in float32), and each DequantizeLinear
  after it Sub, Mul. Clips with constant bounds between them (Brevitas' QCDQ export, which
  stores 2- and 4-bit values in int8/uint8) stay Clips of q, and their bounds give the bit
  width: the smallest signed/unsigned (narrow) range that holds them.
Other Q/DQ nodes stay for TVM's importer. The facts (`facts.py`) record the quantizer of each
Conv/Gemm/MatMul's weight and of its data, with the type's bit width and signedness.

Scales must be constants, positive and finite, else a one-line UserError names the node.
"""

import numpy as np
import onnx
from onnx import TensorProto

from tvmbits.errors import ModelError
from tvmbits.frontend.facts import LayerFacts, QuantizedTensor, collect_layer_facts, uniform
from tvmbits.frontend.graph_edit import GraphEdit, node_name

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# ONNX Runtime writes its contrib Q/DQ (same semantics) for int4/int16 below opset 21
DOMAINS = ("", "ai.onnx", "com.microsoft")
# integer type → (bits, signed); INT2/UINT2 only where the installed onnx defines them
INTEGER_TYPES = {
    TensorProto.INT8: (8, True),
    TensorProto.UINT8: (8, False),
    TensorProto.INT16: (16, True),
    TensorProto.UINT16: (16, False),
    TensorProto.INT32: (32, True),  # biases
    TensorProto.INT4: (4, True),
    TensorProto.UINT4: (4, False),
}
for _name, _spec in (("INT2", (2, True)), ("UINT2", (2, False))):
    if hasattr(TensorProto, _name):
        INTEGER_TYPES[getattr(TensorProto, _name)] = _spec


def is_qdq(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QDQ_OPS and node.domain in DOMAINS for node in model.graph.node)


def rewrite(model: onnx.ModelProto, source: str) -> tuple[onnx.ModelProto, dict[str, LayerFacts]]:
    """`model` with its Q/DQ nodes rewritten (see the module docstring) and the facts per layer
    name. A model without Q/DQ nodes comes back unchanged with no facts."""
    if not is_qdq(model):
        return model, {}
    edit = GraphEdit(model)
    ranks = _ranks(model)
    outputs = {value.name for value in model.graph.output}
    quantizers: dict[str, _Params] = {}  # rewritten Q (or Clip after it) output → the Q
    ranges: dict[str, tuple[int, int]] = {}  # integer range of each rewritten Q / Clip output
    activations: dict[str, QuantizedTensor] = {}
    weights: dict[str, QuantizedTensor] = {}
    for node in model.graph.node:
        x = node.input[0] if node.input else ""
        if node.op_type == "Clip" and x in ranges:
            _clip(edit, node, quantizers, ranges)
            continue
        if node.op_type not in QDQ_OPS or node.domain not in DOMAINS:
            edit.keep(node)
            continue
        const = edit.constant_of(x)
        rank = const.ndim if const is not None else ranks.get(x)
        params = _Params(edit, node, source, rank, quantizers.get(x))
        if params.kind is None:  # a float8 or other non-integer type: TVM's importer decides
            edit.keep(node)
        elif node.op_type == "QuantizeLinear":
            if not _dequantized_only(edit, node.output[0], outputs):  # integer output used as such
                edit.keep(node)
                continue
            if const is not None:
                edit.fold(node.output[0], params.quantize_numpy(const))
            else:
                params.emit_quantize(x, node.output[0])
            quantizers[node.output[0]] = params
            ranges[node.output[0]] = (params.lo, params.hi)
        elif const is not None:
            edit.fold(node.output[0], params.dequantize_numpy(const))
            weights[node.output[0]] = params.fact(ranges.get(x))
        elif x in quantizers:
            params.emit_dequantize(x, node.output[0])
            activations[node.output[0]] = params.fact(ranges.get(x))
        else:
            edit.keep(node)
    facts = collect_layer_facts(edit, activations, weights, "qdq")
    return edit.finish(("com.microsoft",)), facts


def _dequantized_only(edit: GraphEdit, name: str, outputs: set[str]) -> bool:
    """Whether only DequantizeLinear nodes read `name`, directly or through Clips with constant
    bounds (QCDQ), so that its integers never show."""
    consumers = edit.consumers[name]
    if not consumers or name in outputs:
        return False
    for consumer, index in consumers:
        if consumer.op_type == "Clip" and index == 0:
            bounds = [edit.constant_of(b) for b in consumer.input[1:3] if b]
            if any(b is None for b in bounds) or not _dequantized_only(edit, consumer.output[0], outputs):
                return False
        elif consumer.op_type != "DequantizeLinear":
            return False
    return True


def _clip(edit: GraphEdit, node: onnx.NodeProto, quantizers: dict, ranges: dict) -> None:
    """A Clip of a rewritten Q's integers (QCDQ): the same clip on the float q (or the folded
    constant), and the narrower integer range it leaves."""
    x, out = node.input[0], node.output[0]
    lo, hi = ranges[x]
    if len(node.input) > 1 and node.input[1]:
        lo = max(lo, int(edit.constant_of(node.input[1])))
    if len(node.input) > 2 and node.input[2]:
        hi = min(hi, int(edit.constant_of(node.input[2])))
    ranges[out] = (lo, hi)
    quantizers[out] = quantizers[x]
    if edit.constant_of(x) is None:
        edit.emit("Identity", [edit.clip(x, lo, hi)], out)
    else:
        edit.fold(out, np.clip(edit.constant_of(x), lo, hi))


class _Params:
    """Scale, zero point and integer type of one Q or DQ node, checked.

    `rank` is the rank of the node's input when known; `quantizer` the rewritten
    QuantizeLinear a DequantizeLinear reads, which gives its type when it has no zero point.
    """

    def __init__(self, edit: GraphEdit, node: onnx.NodeProto, source: str, rank, quantizer):
        self.edit, self.node, self.rank = edit, node, rank
        self.where = f"{source}: node '{node_name(node)}' ({node.op_type})"
        self.name = node_name(node)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        self.axis, self.block = attrs.get("axis", 1), attrs.get("block_size", 0)
        scale = edit.constant_of(node.input[1])
        if scale is None:
            raise ModelError(f"{self.where}: scale '{node.input[1]}' is not a constant")
        self.scale = np.asarray(scale, np.float32)
        if self.scale.size == 0 or not np.all(np.isfinite(self.scale)) or not np.all(self.scale > 0):
            raise ModelError(f"{self.where}: scale must be positive and finite, got {self.scale.ravel()[:4]}")
        zero_name = node.input[2] if len(node.input) > 2 else ""
        zero = edit.constant_of(zero_name)
        if zero_name and zero is None:
            raise ModelError(f"{self.where}: zero point '{zero_name}' is not a constant")
        if zero_name:
            elem = _elem_type(edit, zero_name)
        elif node.op_type == "QuantizeLinear":
            elem = attrs.get("output_dtype", 0) or TensorProto.UINT8
        elif quantizer is not None:
            elem = quantizer.elem
        else:
            elem = _elem_type(edit, node.input[0])
        self.elem = elem
        self.kind = INTEGER_TYPES.get(elem)
        if self.kind is None:
            return
        bits, signed = self.kind
        self.lo, self.hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        self.zero = np.zeros((), np.int64) if zero is None else np.asarray(zero).astype(np.int64)

    def _shaped(self, array: np.ndarray, length: int | None = None) -> np.ndarray:
        """A per-tensor, per-axis or per-block parameter shaped to broadcast against the input."""
        if array.ndim == 0 or array.size == 1 and not self.block:
            return array.reshape(())
        if self.rank is None:
            raise ModelError(f"{self.where}: per-axis parameters on a tensor of unknown rank")
        axis = self.axis % self.rank
        if self.block:
            if length is None:
                raise ModelError(f"{self.where}: blocked quantization of a computed tensor is not supported")
            return np.take(np.repeat(array, self.block, axis=axis), np.arange(length), axis=axis)
        shape = [1] * self.rank
        shape[axis] = array.size
        return array.reshape(shape)

    def _scale_zero(self, x: np.ndarray | None = None):
        length = x.shape[self.axis % x.ndim] if x is not None and self.block else None
        return self._shaped(self.scale, length), self._shaped(self.zero, length)

    def quantize_numpy(self, x: np.ndarray) -> np.ndarray:
        scale, zero = self._scale_zero(x)
        q = np.rint(np.asarray(x, np.float32) / scale) + zero
        return np.clip(q, self.lo, self.hi).astype(np.int64)

    def dequantize_numpy(self, q: np.ndarray) -> np.ndarray:
        scale, zero = self._scale_zero(q)
        return (np.asarray(q).astype(np.int64) - zero).astype(np.float32) * scale

    def emit_quantize(self, x: str, out: str) -> None:
        edit = self.edit
        scale, zero = self._scale_zero()
        y = edit.emit("Round", [edit.emit("Div", [x, edit.const("scale", scale)])])
        if np.any(zero):
            y = edit.emit("Add", [y, edit.const("zero_point", zero.astype(np.float32))])
        edit.emit("Identity", [edit.clip(y, self.lo, self.hi)], out)

    def emit_dequantize(self, q: str, out: str) -> None:
        edit = self.edit
        scale, zero = self._scale_zero()
        if np.any(zero):
            q = edit.emit("Sub", [q, edit.const("zero_point", zero.astype(np.float32))])
        edit.emit("Mul", [q, edit.const("scale", scale)], out)

    def fact(self, integer_range: tuple[int, int] | None) -> QuantizedTensor:
        """The facts' view: bits from `integer_range` (what a Clip left of the Q's type, QCDQ)
        or the type; scale broadcastable against the input (blocked scales: not usable)."""
        lo, hi = integer_range or (self.lo, self.hi)
        bits, signed, narrow = _bits_of(lo, hi)
        zero = uniform(self.zero)
        if self.block:
            return QuantizedTensor(self.name, bits, signed, narrow, False, self.scale, zero,
                                   "blocked quantization scale")
        return QuantizedTensor(self.name, bits, signed, narrow, False, self._shaped(self.scale), zero)


def _bits_of(lo: int, hi: int) -> tuple[int, bool, bool]:
    """(bits, signed, narrow) of the smallest QONNX-style integer range holding lo..hi."""
    if lo >= 0:
        return max(1, int(hi).bit_length()), False, False
    bits = max(int(-lo - 1).bit_length(), int(hi).bit_length()) + 1
    return bits, True, lo == -(2 ** (bits - 1)) + 1


def _elem_type(edit: GraphEdit, name: str) -> int:
    for init in edit.model.graph.initializer:
        if init.name == name:
            return init.data_type
    producer = edit.producer.get(name)
    if producer is not None and producer.op_type == "Constant":
        return producer.attribute[0].t.data_type
    return TensorProto.UNDEFINED


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor ONNX shape inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a convenience here: per-tensor parameters need no rank
        inferred = model
    graph = inferred.graph
    return {
        value.name: len(value.type.tensor_type.shape.dim)
        for value in [*graph.input, *graph.value_info, *graph.output]
        if value.type.tensor_type.HasField("shape")
    }
