"""PlanLayers: decide, per layer function, which kernel runs it and with which bit widths.

The plan goes into the layer function's attributes (`layer_plan.py`); every layer function of
the module is planned, in any function.

Three ways a layer becomes low-bit:
- *quantized in the model* (QONNX or QDQ): the model's own quantizers give the bits, integer
  weights and scales (`quantized_plan.py`); such a layer never takes --wbits/--abits, and stays
  float with a reason when its quantizers do not fit the kernels.
- *binarized in the graph*: its weight is ±s_o (±1 times a per-output-channel scale s_o ≥ 0,
  exactly) and its data is Sign(z): both operands are bipolar, the kernel computes the exact
  integer ±1 dot product and the epilogue multiplies by s_o. No accuracy change.
- *post-training*: with `wbits`/`abits`, a float layer is quantized. Weights per output channel:
  1 bit → bipolar with scale mean|w| (XNOR-Net); k ≥ 2 bits → signed narrow range
  ±(2^(k−1)−1) with scale max|w| / (2^(k−1)−1). Activations take their encoding and scale from
  calibration (`calibrate.py`), except data that is already Sign(z), which stays bipolar, exact.
  The first and last layers (of the model's layer order) stay float unless `all_layers`.

Kernel: bit-serial when both operands have at most 2 bits and the target's byte kernels are not
faster (`bitserial_pairs`: with AVX512-VNNI, one operand of 1 bit; with the AArch64 dot
product, both), sub-byte otherwise, unless forced.
"""

import numpy as np
import tvm
from tvm import relax

from tvmbits.errors import OptionError
from tvmbits.frontend.facts import LayerFacts
from tvmbits.ops.encoding import Encoding
from tvmbits.passes.layer_plan import LayerPlan
from tvmbits.passes.layers import Layer, is_layer_function
from tvmbits.passes.quantized_plan import plan_from_facts

KERNELS = ("auto", "bitserial", "subbyte")


def check_bits(flag: str, bits: int | None) -> None:
    if bits is not None and not 1 <= bits <= 8:
        raise OptionError(f"{flag} {bits}: bit widths must be between 1 and 8")


def PlanLayers(  # noqa: N802 (TVM's pass naming)
    wbits: int | None = None,
    abits: int | None = None,
    all_layers: bool = False,
    kernel: str = "auto",
    facts: dict[str, LayerFacts] | None = None,
    bitserial_pairs: int = 4,
    order: list[str] | None = None,
) -> tvm.transform.Pass:
    """The pass; `facts` are the frontend's, keyed by layer name; `order` lists the layer names
    in the model's order (its first and last are the edge layers), else the module's order."""
    check_bits("--wbits", wbits)
    check_bits("--abits", abits)
    if kernel not in KERNELS:
        raise OptionError(f"--kernel {kernel}: choose one of {', '.join(KERNELS)}")
    if (wbits is None) != (abits is None):
        wbits = abits = wbits or abits

    @tvm.transform.module_pass(opt_level=0, name="tvmbits.PlanLayers")
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        layers = {gvar: Layer.of(func) for gvar, func in mod.functions.items() if is_layer_function(func)}
        names = order or [layer.name for layer in layers.values()]
        edges = {names[0], names[-1]} if names and not all_layers else set()
        builder = relax.BlockBuilder(mod)
        for gvar, layer in layers.items():
            plan = _plan(layer, wbits, abits, facts or {}, layer.name in edges)
            plan.forced_kernel = kernel
            plan.bitserial_pairs = bitserial_pairs
            if plan.kernel != "float" and plan.act is not None:
                plan.choose_kernel()
            builder.update_func(gvar, mod[gvar].with_attrs(plan.to_attrs()))
        return builder.get()

    return transform


def _plan(layer: Layer, wbits, abits, facts: dict[str, LayerFacts], edge: bool) -> LayerPlan:
    if layer.name in facts:
        plan = plan_from_facts(layer, facts[layer.name])
    else:
        plan = _binarized(layer) or LayerPlan(layer, "float", "float")
    if plan.origin != "float":
        return plan
    if layer.unsupported:
        plan.reason = layer.unsupported
    elif wbits is None:
        plan.reason = "float in the model (give --wbits/--abits to quantize)"
    elif edge:
        plan.reason = "first/last layer stays float (--all-layers to quantize it)"
    else:
        plan = _post_training(layer, wbits, abits)
    return plan


def _binarized(layer: Layer) -> LayerPlan | None:
    if layer.unsupported or not layer.bipolar_data:
        return None
    scale = _bipolar_scale(layer.weight)
    if scale is None:
        return None
    return LayerPlan(
        layer,
        kernel="pending",
        origin="binarized",
        act=Encoding("bipolar", 1),
        wgt=Encoding("bipolar", 1),
        weight_scale=scale,
    )


def _bipolar_scale(weight: np.ndarray) -> np.ndarray | None:
    """s_o when every weight of output channel o is ±s_o, else None."""
    magnitude = np.abs(weight.reshape(weight.shape[0], -1))
    if not np.all(magnitude == magnitude[:, :1]):
        return None
    return magnitude[:, 0].astype(np.float32)


def _post_training(layer: Layer, wbits: int, abits: int) -> LayerPlan:
    flat = layer.weight.reshape(layer.weight.shape[0], -1).astype(np.float64)
    if wbits == 1:
        wgt = Encoding("bipolar", 1)
        scale = np.abs(flat).mean(axis=1)
    else:
        wgt = Encoding("signed", wbits)
        scale = np.abs(flat).max(axis=1) / (2 ** (wbits - 1) - 1)
        scale[scale == 0] = 1.0
    plan = LayerPlan(layer, kernel="pending", origin="post-training", wgt=wgt, weight_scale=scale.astype(np.float32))
    if layer.bipolar_data:
        plan.act = Encoding("bipolar", 1)
    else:
        plan.act_bits = abits
    return plan
