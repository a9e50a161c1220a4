"""Quantization facts: what the quantizers of a QONNX or QDQ model say about each layer.

The frontends (`qonnx.py`, `qdq.py`) rewrite quantizers into standard ONNX ops that compute the
same float values, so the float graph alone is exact; the facts they record beside it let
`passes/quantized_plan.py` run the layer on integer kernels instead. A quantized tensor holds
real = scale · (q − zero_point) with integer q in [lo, hi] (or q = ±1 when bipolar).

Facts are keyed by the ONNX node name (else its first output) of the Conv/Gemm/MatMul they feed.
"""

from dataclasses import dataclass, replace

import numpy as np

from tvmbits.frontend.graph_edit import LAYER_OPS, node_name


@dataclass(frozen=True)
class QuantizedTensor:
    """One quantizer's parameters, as the model states them.

    `scale` is float32: a scalar for per-tensor scales, else the per-output-channel vector [O]
    of a weight (the frontend reshapes it along the consumer's output axis); `per_axis_reason`
    is set instead when a scale varies along any other axis.
    """

    node: str  # the quantizer node's name
    bits: int
    signed: bool
    narrow: bool
    bipolar: bool
    scale: np.ndarray
    zero_point: float  # the zero point when one value holds for the whole tensor, else NaN
    per_axis_reason: str = ""

    def describe(self) -> str:
        """E.g. 'signed4 narrow, per-channel scale', 'bipolar1, per-tensor scale'."""
        kind = "bipolar" if self.bipolar else ("signed" if self.signed else "unsigned")
        text = f"{kind}{self.bits}" + (" narrow" if self.narrow and not self.bipolar else "")
        text += ", per-channel scale" if np.ndim(self.scale) else ", per-tensor scale"
        if np.isnan(self.zero_point):
            text += ", per-channel zero points"
        elif self.zero_point:
            text += f", zero point {self.zero_point:g}"
        return text


def uniform(zero_point: np.ndarray) -> float:
    """`QuantizedTensor.zero_point` of a zero-point array: its one value, else NaN."""
    flat = np.asarray(zero_point, np.float64).ravel()
    return float(flat[0]) if flat.size and np.all(flat == flat[0]) else float("nan")


@dataclass
class LayerFacts:
    """What the model says about one layer's activation (data) and weight quantizers."""

    source: str  # "qonnx" | "qdq": where the bits came from
    act: QuantizedTensor | None = None
    weight: QuantizedTensor | None = None


def collect_layer_facts(
    edit, activations: dict[str, QuantizedTensor], weights: dict[str, QuantizedTensor], source: str
) -> dict[str, LayerFacts]:
    """Facts per Conv/Gemm/MatMul of `edit`'s original graph (a `graph_edit.GraphEdit`).

    `activations` / `weights` map the output names of rewritten activation quantizers and of
    folded weight quantizers to their parameters. A layer's data is quantized when it comes from
    an activation quantizer through value-preserving ops; its weight when input 1 is a folded
    weight quantizer's output. Weight scales are reshaped to [O] along the layer's output axis
    (Conv: 0; Gemm: 0 with transB, else 1; MatMul: 1).
    """
    facts = {}
    for node in edit.model.graph.node:
        if node.op_type not in LAYER_OPS or len(node.input) < 2:
            continue
        act = activations.get(edit.source_through_value_preserving(node.input[0]))
        weight = weights.get(node.input[1])
        if act is None and weight is None:
            continue
        if act is not None and np.size(act.scale) != 1:
            act = replace(act, per_axis_reason="per-channel activation scale")
        elif act is not None:
            act = replace(act, scale=np.float32(np.asarray(act.scale).item()))
        if weight is not None:
            weight = _per_output_channel(weight, edit.constants[node.input[1]].shape, _output_axis(node))
        facts[node_name(node)] = LayerFacts(source, act, weight)
    return facts


def _output_axis(node) -> int:
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1 if node.op_type == "MatMul" else 0


def _per_output_channel(weight: QuantizedTensor, shape: tuple[int, ...], axis: int) -> QuantizedTensor:
    scale = np.asarray(weight.scale, np.float32)
    if weight.per_axis_reason:
        return weight
    if scale.size == 1:
        return replace(weight, scale=np.float32(scale.item()))
    try:
        full = np.broadcast_to(scale, shape)
    except ValueError:
        return replace(weight, per_axis_reason=f"weight scale {scale.shape} does not broadcast to the weight {shape}")
    vector = np.moveaxis(full, axis, 0).reshape(shape[axis], -1)
    if not np.all(vector == vector[:, :1]):
        return replace(weight, per_axis_reason="weight scale varies along an input axis")
    return replace(weight, scale=np.ascontiguousarray(vector[:, 0]))
