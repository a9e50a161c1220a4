"""QONNX models (Brevitas' `export_qonnx`) into standard ONNX plus quantization facts.

TVM's ONNX importer knows no QONNX ops, so `rewrite` replaces them before import, with the
semantics of the qonnx package's reference executor (domains `qonnx.custom_op.general` and
its alias `onnx.brevitas`), computed in float32:

- `Quant` / `IntQuant` (X, scale, zeropt, bitwidth; attributes signed = 1, narrow = 1,
  rounding_mode = ROUND when absent, as qonnx): y = clamp(X / scale + zeropt, lo, hi), then
  rounded, out = (y − zeropt) · scale, with lo..hi = [−2^(b−1) (+1 if narrow), 2^(b−1) − 1]
  signed, [0, 2^b − 1 (−1 if narrow)] unsigned. A 1-bit signed Quant is bipolar:
  y = +1 where X / scale + zeropt ≥ 0, else −1 (no clamp, no rounding).
- `BipolarQuant` (X, scale): out = (+1 where X ≥ 0 else −1) · scale.
- `Trunc` v1 (X, scale, zeropt, in_bw, out_bw; rounding_mode FLOOR):
  y = round_half_even(X / scale + zeropt) / 2^(in_bw − out_bw), rounded, out = (y − zeropt)·scale.
  `Trunc` v2 (X, scale, zeropt, in_bw, out_scale, out_bw; signed, narrow): t = 2^round(log2(
  out_scale / scale)), y = clamp(round_half_even(X / scale + zeropt) / t, lo, hi), rounded,
  out = (y − zeropt / t) · out_scale. The version is told by the input count.

A Quant or BipolarQuant whose X is a constant (a weight) is folded into that constant,
scale·(q − zeropt) exactly as above; every other quantizer becomes the standard ONNX ops of the formula
(Div, Add, Clip, Round/Floor/…, Sub, Mul, or GreaterOrEqual/Where for bipolar). Either way
the float graph computes what qonnx computes, and the facts (`facts.py`) record, for each
Conv/Gemm/MatMul, the quantizer of its weight and of its data (found through value-preserving
ops such as Reshape or MaxPool) so that the layer can run on integer kernels.

Scale, zero point and bit width must be constants. Malformed ones (bit width not a positive
integer, a scale ≤ 0, a zero point that is not an integer inside lo..hi, an unknown rounding
mode) raise a one-line UserError naming the node.
"""

import numpy as np
import onnx

from tvmbits.errors import ModelError
from tvmbits.frontend import rounding
from tvmbits.frontend.facts import LayerFacts, QuantizedTensor, collect_layer_facts, uniform
from tvmbits.frontend.graph_edit import GraphEdit, node_name

DOMAINS = ("qonnx.custom_op.general", "onnx.brevitas")
OPS = ("Quant", "IntQuant", "BipolarQuant", "Trunc")


def is_qonnx(model: onnx.ModelProto) -> bool:
    return any(node.domain in DOMAINS and node.op_type in OPS for node in model.graph.node)


def rewrite(model: onnx.ModelProto, source: str) -> tuple[onnx.ModelProto, dict[str, LayerFacts]]:
    """`model` with every QONNX quantizer replaced (see the module docstring), and the facts
    per layer name. A model without QONNX nodes comes back unchanged with no facts."""
    if not is_qonnx(model):
        return model, {}
    edit = GraphEdit(model)
    activations: dict[str, QuantizedTensor] = {}
    weights: dict[str, QuantizedTensor] = {}
    for node in model.graph.node:
        if node.domain not in DOMAINS or node.op_type not in OPS:
            edit.keep(node)
            continue
        quant = _Quantizer(edit, node, source)
        if quant.x_const is not None and node.op_type != "Trunc":
            edit.fold(node.output[0], quant.numpy())
            if quant.fact is not None:
                weights[node.output[0]] = quant.fact
        else:
            quant.emit()
            if quant.fact is not None:
                activations[node.output[0]] = quant.fact
    facts = collect_layer_facts(edit, activations, weights, "qonnx")
    return edit.finish(DOMAINS), facts


class _Quantizer:
    """One QONNX node, checked; `numpy()` folds it, `emit()` writes its standard-ONNX form."""

    def __init__(self, edit: GraphEdit, node: onnx.NodeProto, source: str):
        self.edit, self.node = edit, node
        self.where = f"{source}: node '{node_name(node)}' ({node.op_type})"
        self.x = node.input[0]
        self.x_const = edit.constant_of(self.x)
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        self.fact = None
        if node.op_type == "BipolarQuant":
            self.scale = self._scale(1)
            self.fact = QuantizedTensor(node_name(node), 1, True, False, True, self.scale, 0.0)
        elif node.op_type == "Trunc":
            self._check_trunc()
        else:
            self._check_quant()

    # -- checks -------------------------------------------------------------------------
    def _input(self, index: int, what: str) -> np.ndarray:
        if index >= len(self.node.input) or not self.node.input[index]:
            raise ModelError(f"{self.where}: missing input {what}")
        value = self.edit.constant_of(self.node.input[index])
        if value is None:
            raise ModelError(f"{self.where}: {what} '{self.node.input[index]}' is not a constant")
        return np.asarray(value, np.float32)

    def _scale(self, index: int, what: str = "scale") -> np.ndarray:
        scale = self._input(index, what)
        if scale.size == 0 or not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            raise ModelError(f"{self.where}: {what} must be positive and finite, got {_show(scale)}")
        return scale

    def _bits(self, index: int, what: str = "bitwidth") -> int:
        bits = self._input(index, what)
        if bits.size != 1 or not np.isfinite(bits.item()) or bits.item() != int(bits.item()) or bits.item() < 1:
            raise ModelError(f"{self.where}: {what} must be a positive integer, got {_show(bits)}")
        return int(bits.item())

    def _flag(self, name: str, default: int) -> bool:
        value = self.attrs.get(name, default)
        if value not in (0, 1):
            raise ModelError(f"{self.where}: attribute {name}={value} must be 0 or 1")
        return bool(value)

    def _mode(self, default: str) -> str:
        mode = self.attrs.get("rounding_mode", default)
        mode = (mode.decode() if isinstance(mode, bytes) else mode).upper()
        if mode not in rounding.MODES:
            raise ModelError(f"{self.where}: unknown rounding_mode {mode} (use one of {', '.join(rounding.MODES)})")
        return mode

    def _zero_point(self, index: int, lo: int, hi: int) -> np.ndarray:
        zero = self._input(index, "zero point")
        if zero.size == 0 or not np.all(zero == np.round(zero)) or zero.min() < lo or zero.max() > hi:
            raise ModelError(f"{self.where}: zero point must be an integer in {lo}..{hi}, got {_show(zero)}")
        return zero

    def _check_quant(self) -> None:
        self.scale = self._scale(1)
        self.bits = self._bits(3)
        self.signed, self.narrow = self._flag("signed", 1), self._flag("narrow", 1)
        self.mode = self._mode("ROUND")
        self.bipolar = self.bits == 1 and self.signed
        self.lo, self.hi = _int_range(self.signed, self.narrow, self.bits)
        self.zero = self._zero_point(2, self.lo, self.hi)
        self.fact = QuantizedTensor(
            node_name(self.node), self.bits, self.signed, self.narrow, self.bipolar, self.scale, uniform(self.zero)
        )

    def _check_trunc(self) -> None:
        self.v2 = len(self.node.input) >= 6
        self.scale = self._scale(1)
        in_bits = self._bits(3, "input bitwidth")
        self.out_bits = self._bits(5 if self.v2 else 4, "output bitwidth")
        self.mode = self._mode("FLOOR")
        if self.v2:
            self.out_scale = self._scale(4, "output scale")
            self.signed, self.narrow = self._flag("signed", 1), self._flag("narrow", 0)
            self.lo, self.hi = _int_range(self.signed, self.narrow, self.out_bits)
            self.trunc = (2 ** np.round(np.log2(self.out_scale / self.scale))).astype(np.float32)
        else:
            if self.out_bits > in_bits:
                raise ModelError(f"{self.where}: output bitwidth {self.out_bits} exceeds input bitwidth {in_bits}")
            self.trunc = np.float32(2.0 ** (in_bits - self.out_bits))
        self.zero = self._zero_point(2, -(2**in_bits) + 1, 2**in_bits - 1)

    # -- semantics ----------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The output of a Quant or BipolarQuant for a constant X, float32 as qonnx computes it."""
        x = np.asarray(self.x_const, np.float32)
        if self.node.op_type == "BipolarQuant":
            return np.where(x >= 0, np.float32(1), np.float32(-1)) * self.scale
        y = x / self.scale + self.zero
        if self.bipolar:
            y = np.where(y >= 0, np.float32(1), np.float32(-1))
        else:
            y = rounding.NUMPY[self.mode](np.clip(y, np.float32(self.lo), np.float32(self.hi)))
        return ((y - self.zero) * self.scale).astype(np.float32)

    def emit(self) -> None:
        edit, out = self.edit, self.node.output[0]
        if self.node.op_type == "BipolarQuant":
            signs = self._bipolar(self.x)
            edit.emit("Mul", [signs, edit.const("scale", self.scale)], out)
            return
        y = edit.emit("Div", [self.x, edit.const("scale", self.scale)])
        if np.any(self.zero):
            y = edit.emit("Add", [y, edit.const("zero_point", self.zero)])
        if self.node.op_type == "Trunc":
            self._emit_trunc(y)
            return
        if self.bipolar:
            y = self._bipolar(y)
        else:
            y = rounding.ONNX[self.mode](edit, self._clamp(y))
        if np.any(self.zero):
            y = edit.emit("Sub", [y, edit.const("zero_point", self.zero)])
        edit.emit("Mul", [y, edit.const("scale", self.scale)], out)

    def _emit_trunc(self, y: str) -> None:
        edit, out = self.edit, self.node.output[0]
        y = edit.emit("Div", [edit.emit("Round", [y]), edit.const("trunc_scale", self.trunc)])
        if self.v2:
            y = self._clamp(y)
        y = rounding.ONNX[self.mode](edit, y)
        zero = (self.zero / self.trunc).astype(np.float32) if self.v2 else self.zero
        if np.any(zero):
            y = edit.emit("Sub", [y, edit.const("zero_point", zero)])
        edit.emit("Mul", [y, edit.const("scale", self.out_scale if self.v2 else self.scale)], out)
        if self.v2:
            self.fact = QuantizedTensor(
                node_name(self.node), self.out_bits, self.signed, self.narrow, False,
                self.out_scale, uniform(zero),
            )

    def _clamp(self, y: str) -> str:
        return self.edit.clip(y, self.lo, self.hi)

    def _bipolar(self, y: str) -> str:
        edit = self.edit
        ge = edit.emit("GreaterOrEqual", [y, edit.const("zero", np.float32(0))])
        return edit.emit("Where", [ge, edit.const("plus_one", np.float32(1)), edit.const("minus_one", np.float32(-1))])


def _int_range(signed: bool, narrow: bool, bits: int) -> tuple[int, int]:
    """QONNX's min_int / max_int."""
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - int(narrow)


def _show(array: np.ndarray) -> str:
    flat = np.asarray(array).ravel()
    return f"{flat[0]:g}" if flat.size == 1 else f"[{', '.join(f'{v:g}' for v in flat[:4])}{', …' if flat.size > 4 else ''}]"
