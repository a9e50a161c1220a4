"""Decide, per layer, which kernel runs it and with which bit widths.

Two ways a layer becomes low-bit:
- *binarized in the graph*: its weight is ±s_o (±1 times a per-output-channel scale s_o ≥ 0,
  exactly) and its data is Sign(z): both operands are bipolar, the kernel computes the exact
  integer ±1 dot product and the epilogue multiplies by s_o. No accuracy change.
- *post-training*: with `wbits`/`abits`, a float layer is quantized. Weights per output channel:
  1 bit → bipolar with scale mean|w| (XNOR-Net); k ≥ 2 bits → signed narrow range
  ±(2^(k−1)−1) with scale max|w| / (2^(k−1)−1). Activations take their encoding and scale from
  calibration (`calibrate.py`), except data that is already Sign(z), which stays bipolar, exact.
  The first and last layers stay float unless `all_layers`.

Kernel: bit-serial when both operands have at most 2 bits, sub-byte otherwise, unless forced.
"""

from dataclasses import dataclass

import numpy as np

from tvmbits.errors import UserError
from tvmbits.ops.encoding import Encoding
from tvmbits.passes.layers import Layer

KERNELS = ("auto", "bitserial", "subbyte")
WORD_BITS = 32


@dataclass
class LayerPlan:
    layer: Layer
    kernel: str  # "bitserial" | "subbyte" | "float"
    origin: str  # "binarized" | "post-training" | "float"
    reason: str = ""  # why a float layer stays float
    act: Encoding | None = None  # None until calibrated
    act_bits: int | None = None  # bits to calibrate the activation encoding for
    act_scale: float = 1.0  # real activation = act_scale · value
    wgt: Encoding | None = None
    weight_values: np.ndarray | None = None  # int64, in the layer's weight layout
    weight_scale: np.ndarray | None = None  # float32 [O]: real weight = weight_scale · value
    forced_kernel: str = "auto"

    @property
    def name(self) -> str:
        return self.layer.name

    def choose_kernel(self) -> None:
        """Pick the kernel once both encodings are known."""
        if self.forced_kernel != "auto":
            self.kernel = self.forced_kernel
        else:
            small = max(self.act.bits, self.wgt.bits) <= 2
            self.kernel = "bitserial" if small else "subbyte"

    def packed_weight_bytes(self) -> int | None:
        if self.kernel == "float":
            return None
        out_channels, *_, channels = self.weight_values.shape
        taps = self.weight_values.size // (out_channels * channels)
        if self.kernel == "bitserial":
            per_tap = self.wgt.bits * -(-channels // WORD_BITS) * (WORD_BITS // 8)
        else:
            per_tap = -(-channels // 2) if self.wgt.bits <= 4 else channels
        return out_channels * taps * per_tap

    def to_json(self) -> dict:
        weight = self.layer.weight
        return {
            "name": self.name,
            "op": self.layer.op,
            "kernel": self.kernel,
            "origin": self.origin,
            "reason": self.reason or None,
            "activation": None if self.act is None else f"{self.act.kind}{self.act.bits}",
            "weight": None if self.wgt is None else f"{self.wgt.kind}{self.wgt.bits}",
            "abits": None if self.act is None else self.act.bits,
            "wbits": None if self.wgt is None else self.wgt.bits,
            "weight_shape": None if weight is None else list(weight.shape),
            "weight_bytes_float": None if weight is None else int(weight.size * 4),
            "weight_bytes_packed": self.packed_weight_bytes(),
        }


def check_bits(flag: str, bits: int | None) -> None:
    if bits is not None and not 1 <= bits <= 8:
        raise UserError(f"{flag} {bits}: bit widths must be between 1 and 8")


def assign_bits(
    layers: list[Layer],
    wbits: int | None = None,
    abits: int | None = None,
    all_layers: bool = False,
    kernel: str = "auto",
) -> list[LayerPlan]:
    check_bits("--wbits", wbits)
    check_bits("--abits", abits)
    if kernel not in KERNELS:
        raise UserError(f"--kernel {kernel}: choose one of {', '.join(KERNELS)}")
    if (wbits is None) != (abits is None):
        wbits = abits = wbits or abits
    plans = []
    for index, layer in enumerate(layers):
        plan = _binarized(layer) or LayerPlan(layer, "float", "float")
        if plan.origin == "float":
            edge = index in (0, len(layers) - 1) and not all_layers
            if layer.unsupported:
                plan.reason = layer.unsupported
            elif wbits is None:
                plan.reason = "float in the model (give --wbits/--abits to quantize)"
            elif edge:
                plan.reason = "first/last layer stays float (--all-layers to quantize it)"
            else:
                plan = _post_training(layer, wbits, abits)
        plan.forced_kernel = kernel
        if plan.kernel != "float" and plan.act is not None:
            plan.choose_kernel()
        plans.append(plan)
    return plans


def _binarized(layer: Layer) -> LayerPlan | None:
    if layer.unsupported or layer.sign_of is None:
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
        weight_values=np.where(layer.weight >= 0, 1, -1).astype(np.int64),
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
        values = np.where(layer.weight >= 0, 1, -1)
    else:
        wgt = Encoding("signed", wbits)
        top = 2 ** (wbits - 1) - 1
        scale = np.abs(flat).max(axis=1) / top
        scale[scale == 0] = 1.0
        shaped = scale.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
        values = np.clip(np.rint(layer.weight / shaped), -top, top)
    plan = LayerPlan(
        layer,
        kernel="pending",
        origin="post-training",
        wgt=wgt,
        weight_values=values.astype(np.int64),
        weight_scale=scale.astype(np.float32),
    )
    if layer.sign_of is not None:
        plan.act = Encoding("bipolar", 1)
    else:
        plan.act_bits = abits
    return plan
