"""The plan of one conv2d/dense layer: kernel, encodings, integer weights and scales.

`origin` says where the bits came from: "binarized" (Sign → ±s layer in the graph),
"post-training" (--wbits/--abits with calibration), "qonnx" or "qdq" (the model's own
quantizers), or "float". The real layer output is float32(acc) · float32(act_scale ·
weight_scale[o]), acc the exact integer sum of (activation value − act_zero_point) times
`weight_values` over the taps inside the input.
"""

from dataclasses import dataclass

import numpy as np

from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import packed_weight_bytes
from tvmbits.passes.layers import Layer

WORD_BITS = 32


@dataclass
class LayerPlan:
    layer: Layer
    kernel: str  # "bitserial" | "subbyte" | "float"
    origin: str  # "binarized" | "post-training" | "qonnx" | "qdq" | "float"
    reason: str = ""  # why a float layer stays float
    act: Encoding | None = None  # None until calibrated
    act_bits: int | None = None  # bits to calibrate the activation encoding for
    act_scale: float = 1.0  # real activation = act_scale · (value − act_zero_point)
    act_zero_point: int = 0  # the kernel sums value · weight; lowering subtracts z · Σ weight
    wgt: Encoding | None = None
    weight_values: np.ndarray | None = None  # int64, in the layer's weight layout
    weight_scale: np.ndarray | None = None  # float32 [O]: real weight = weight_scale · value
    forced_kernel: str = "auto"
    byte_dot: bool = False  # the target multiplies bytes fast (x86 VNNI): sub-byte from 2×2 bits on
    found: dict | None = None  # what the model's quantizers say (QONNX/QDQ), even if float

    @property
    def name(self) -> str:
        return self.layer.name

    def choose_kernel(self) -> None:
        """Pick the kernel once both encodings are known."""
        if self.forced_kernel != "auto":
            self.kernel = self.forced_kernel
            return
        low, high = sorted((self.act.bits, self.wgt.bits))
        # bit-serial costs one popcount per pair of bit planes: at most two pairs; with byte dot
        # products a 2×2-bit layer (four pairs) is faster as bytes
        small = high <= 2 and not (self.byte_dot and low == 2)
        self.kernel = "bitserial" if small else "subbyte"

    def packed_weight_bytes(self) -> int | None:
        if self.kernel == "float":
            return None
        out_channels, *_, channels = self.weight_values.shape
        taps = self.weight_values.size // (out_channels * channels)
        if self.kernel == "bitserial":
            per_tap = self.wgt.bits * -(-channels // WORD_BITS) * (WORD_BITS // 8)
            return out_channels * taps * per_tap
        return packed_weight_bytes(out_channels, taps, channels, self.wgt)

    def to_json(self) -> dict:
        weight = self.layer.weight
        return {
            "name": self.name,
            "op": self.layer.op,
            "kernel": self.kernel,
            "origin": self.origin,
            "found": self.found,
            "reason": self.reason or None,
            "activation": None if self.act is None else f"{self.act.kind}{self.act.bits}",
            "weight": None if self.wgt is None else f"{self.wgt.kind}{self.wgt.bits}",
            "activation_zero_point": self.act_zero_point or None,
            "abits": None if self.act is None else self.act.bits,
            "wbits": None if self.wgt is None else self.wgt.bits,
            "weight_shape": None if weight is None else list(weight.shape),
            "weight_bytes_float": None if weight is None else int(weight.size * 4),
            "weight_bytes_packed": self.packed_weight_bytes(),
        }
