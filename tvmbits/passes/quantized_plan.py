"""Low-bit plans for layers whose quantizers the model itself states (QONNX or QDQ facts).

No calibration and no accuracy change: the frontend left the layer's float weight equal to
float32(s_o · q) and its data equal to float32(s_a · q_a) (`frontend/facts.py`), so the plan
recovers q = rint(weight / s_o), checks that float32(s_o · q) gives the weight back bit for
bit, and the lowered layer quantizes its data back to q_a exactly (rounding removes the
float32 error of s_a · q_a). The kernel's integer sum times float32(s_a · s_o) is then the float
layer's result up to float32 round-off. An activation with a zero point z (data s_a·(q − z),
e.g. ONNX Runtime's asymmetric uint8) runs on its codes q, and the plan's `act_zero_point`
makes the lowering subtract z · Σ w over the taps inside the input (`lower_lowbit.py`).

A layer stays float, with `reason` saying why, when its data or weight is not a quantizer's
output, a scale is per channel where the epilogue cannot take it (activations; weights along
an input axis), the weight's zero point is not 0 (or the activation's is per channel, not an
integer, or on a bipolar quantizer), a bit width is above 8, or the layer itself is
unsupported (grouped or dilated convolution, …).
"""

import numpy as np

from tvmbits.frontend.facts import LayerFacts, QuantizedTensor
from tvmbits.ops.encoding import MAX_BITS, Encoding
from tvmbits.passes.layer_plan import LayerPlan
from tvmbits.passes.layers import Layer


def plan_from_facts(layer: Layer, facts: LayerFacts) -> LayerPlan:
    """The LayerPlan of `layer` (kernel "pending" when low-bit, "float" with a reason if not)."""
    found = {
        "activation": None if facts.act is None else facts.act.describe(),
        "weight": None if facts.weight is None else facts.weight.describe(),
    }
    plan = LayerPlan(layer, "float", facts.source, found=found)
    plan.reason = _why_float(layer, facts)
    if plan.reason:
        return plan
    wgt = _encoding(facts.weight)
    out_channels = layer.weight.shape[0]
    scale = np.broadcast_to(np.asarray(facts.weight.scale, np.float32), (out_channels,))
    shaped = scale.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
    values = np.rint(layer.weight / shaped)
    if not np.array_equal(values.astype(np.float32) * shaped, layer.weight):
        plan.reason = f"weight is not scale · integer (quantizer {facts.weight.node})"
        return plan
    lo, hi = wgt.value_range
    if values.min() < lo or values.max() > hi or (wgt.kind == "bipolar" and np.any(values == 0)):
        plan.reason = f"weight integers leave the {wgt.kind}{wgt.bits} range (quantizer {facts.weight.node})"
        return plan
    plan.kernel = "pending"
    plan.act = _encoding(facts.act)
    plan.act_scale = float(facts.act.scale)
    plan.act_zero_point = int(facts.act.zero_point)
    plan.wgt = wgt
    plan.weight_scale = np.ascontiguousarray(scale, np.float32)
    return plan


def _why_float(layer: Layer, facts: LayerFacts) -> str:
    if layer.unsupported:
        return layer.unsupported
    for role, quant in (("activation", facts.act), ("weight", facts.weight)):
        if quant is None:
            what = "data is not the output of a quantizer" if role == "activation" else "weight is not quantized"
            return f"{what} in the model"
        if quant.per_axis_reason:
            return f"{quant.per_axis_reason} (quantizer {quant.node})"
        zero = quant.zero_point
        if np.isnan(zero):
            return f"per-channel {role} zero points (quantizer {quant.node})"
        if zero and (role == "weight" or quant.bipolar or zero != round(zero)):
            what = "not 0" if role == "weight" else ("not 0 for a bipolar activation" if quant.bipolar else "not an integer")
            return f"{role} zero point is {what} (quantizer {quant.node})"
        if quant.bits > MAX_BITS:
            return f"{quant.bits}-bit {role} (quantizer {quant.node}): low-bit kernels take 1 to {MAX_BITS} bits"
    return ""


def _encoding(quant: QuantizedTensor) -> Encoding:
    if quant.bipolar:
        return Encoding("bipolar", 1)
    return Encoding("signed" if quant.signed else "unsigned", quant.bits)
