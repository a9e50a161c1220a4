"""The plan of one conv2d/dense layer: kernel, encodings, scales; kept in its layer function.

`origin` says where the bits came from: "binarized" (Sign → ±s layer in the graph),
"post-training" (--wbits/--abits with calibration), "qonnx" or "qdq" (the model's own
quantizers), or "float". The real layer output is float32(acc) · float32(act_scale ·
weight_scale[o]), acc the exact integer sum of (activation value − act_zero_point) times
`weight_values` over the taps inside the input.

A plan lives in the attributes of its layer function (`layers.py`), `tvmbits.plan.*`, as
plain strings, integers and floats, so that it travels with the layer through any pass:
`to_attrs` writes them, `LayerPlan.of` reads a layer function's plan back. The integer weights
are not stored: they follow from the float weight, the scale and the encoding
(`integer_weights`), which the planner has checked give the weight back where the model says so.
"""

import json
from dataclasses import dataclass

import numpy as np
from tvm import relax

from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import packed_weight_bytes
from tvmbits.passes.layers import Layer

WORD_BITS = 32
PREFIX = "tvmbits.plan."


def integer_weights(weight: np.ndarray, scale: np.ndarray, wgt: Encoding) -> np.ndarray:
    """int64 weight values in `wgt`'s range: the sign for bipolar (0 → +1), else
    rint(weight / scale) per output channel (axis 0), clipped to the range."""
    if wgt.kind == "bipolar":
        return np.where(weight >= 0, 1, -1).astype(np.int64)
    shaped = np.asarray(scale, np.float32).reshape((-1,) + (1,) * (weight.ndim - 1))
    lo, hi = wgt.value_range
    return np.clip(np.rint(weight / shaped), lo, hi).astype(np.int64)


@dataclass
class LayerPlan:
    layer: Layer
    kernel: str  # "bitserial" | "subbyte" | "float" | "pending" (until calibrated)
    origin: str  # "binarized" | "post-training" | "qonnx" | "qdq" | "float"
    reason: str = ""  # why a float layer stays float
    act: Encoding | None = None  # None until calibrated
    act_bits: int | None = None  # bits to calibrate the activation encoding for
    act_scale: float = 1.0  # real activation = act_scale · (value − act_zero_point)
    act_zero_point: int = 0  # the kernel sums value · weight; lowering subtracts z · Σ weight
    wgt: Encoding | None = None
    weight_scale: np.ndarray | None = None  # float32 [O]: real weight = weight_scale · value
    forced_kernel: str = "auto"
    bitserial_pairs: int = 4  # the most bit-plane pairs auto runs bit-serial (`schedules.byte_dot`)
    found: dict | None = None  # what the model's quantizers say (QONNX/QDQ), even if float

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def weight_values(self) -> np.ndarray:
        """int64, in the layer's weight layout (OHWI or [O, K])."""
        return integer_weights(self.layer.weight, self.weight_scale, self.wgt)

    def choose_kernel(self) -> None:
        """Pick the kernel once both encodings are known."""
        if self.forced_kernel != "auto":
            self.kernel = self.forced_kernel
            return
        # bit-serial costs one popcount pass per pair of bit planes; on CPUs with byte dot
        # products fewer pairs already cost more than bytes
        bits = self.act.bits, self.wgt.bits
        small = max(bits) <= 2 and bits[0] * bits[1] <= self.bitserial_pairs
        self.kernel = "bitserial" if small else "subbyte"

    def packed_weight_bytes(self) -> int | None:
        if self.kernel in ("float", "pending"):
            return None
        out_channels, *_, channels = self.layer.weight.shape
        taps = self.layer.weight.size // (out_channels * channels)
        if self.kernel == "bitserial":
            per_tap = self.wgt.bits * -(-channels // WORD_BITS) * (WORD_BITS // 8)
            return out_channels * taps * per_tap
        return packed_weight_bytes(out_channels, taps, channels, self.wgt)

    def to_attrs(self) -> dict:
        """The plan as layer-function attributes (plain values only)."""
        attrs = {
            "kernel": self.kernel,
            "origin": self.origin,
            "reason": self.reason,
            "act": "" if self.act is None else f"{self.act.kind}{self.act.bits}",
            "act_bits": self.act_bits or 0,
            "act_scale": float(self.act_scale),
            "act_zero_point": int(self.act_zero_point),
            "wgt": "" if self.wgt is None else f"{self.wgt.kind}{self.wgt.bits}",
            "weight_scale": [] if self.weight_scale is None else [float(s) for s in self.weight_scale],
            "forced_kernel": self.forced_kernel,
            "bitserial_pairs": int(self.bitserial_pairs),
            "found": "" if self.found is None else json.dumps(self.found),
        }
        return {PREFIX + key: value for key, value in attrs.items()}

    @staticmethod
    def of(func: relax.Function) -> "LayerPlan":
        """The plan in a planned layer function's attributes."""
        attrs = {key[len(PREFIX):]: func.attrs[key] for key in func.attrs.keys() if key.startswith(PREFIX)}
        scale = list(attrs["weight_scale"])
        return LayerPlan(
            Layer.of(func),
            kernel=str(attrs["kernel"]),
            origin=str(attrs["origin"]),
            reason=str(attrs["reason"]),
            act=_encoding(str(attrs["act"])),
            act_bits=int(attrs["act_bits"]) or None,
            act_scale=float(attrs["act_scale"]),
            act_zero_point=int(attrs["act_zero_point"]),
            wgt=_encoding(str(attrs["wgt"])),
            weight_scale=np.array(scale, np.float32) if scale else None,
            forced_kernel=str(attrs["forced_kernel"]),
            bitserial_pairs=int(attrs["bitserial_pairs"]),
            found=json.loads(str(attrs["found"])) if str(attrs["found"]) else None,
        )

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


def is_planned(func) -> bool:
    return isinstance(func, relax.Function) and func.attrs is not None and PREFIX + "kernel" in func.attrs


def _encoding(text: str) -> Encoding | None:
    if not text:
        return None
    kind = text.rstrip("0123456789")
    return Encoding(kind, int(text[len(kind):]))
