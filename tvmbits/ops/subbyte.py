"""Operands of the sub-byte (byte dot-product) kernels, `subbyte_conv2d` and `subbyte_dense`.

The kernels multiply one byte of activation by one byte of weight and sum in int32: the shape
of the byte dot-product instructions (x86 VNNI `vpdpbusd`: 16 int32 sums, each of 4 uint8 × int8
products, per instruction), which the x86 schedule tensorizes when the CPU has them.

Activations (`subbyte_pack`, TE, per call): uint8 `[..., CP]`, CP = C rounded up to a multiple
of `DOT` (4), one *biased* value per byte: u = value + `bias(act)`, bias = −(smallest value) of
the encoding (bipolar 1, so u ∈ {0, 2}; signed k-bit 2^(k−1); unsigned 0), so u ∈ 0 … 255.
Padding (channels up to CP, and the pixels a conv pads with) is u = bias: value 0.

Weights: the kernels read the values blocked as `[ceil(O/16), *taps, CP/4, 16, 4]` int8
(uint8 for unsigned 8-bit, whose values pass 127; `block_weight`, numpy): 16 output channels
(`BLOCK`) × 4 consecutive input channels, 64 bytes, the weight operand of one dot-product
instruction; padded output and input channels are value 0. The compiled model stores them
packed (`pack_subbyte_weight`, at compile time): values of ≤ 2 bits four per byte in 2-bit
fields and values of 3–4 bits two per byte in 4-bit fields, the block's last axis `[4 /
per_byte]`, input channel 4j + k in field k % per_byte (from the low bits) of byte
k // per_byte, as two's complement of the field's width (unsigned encodings: plain), a quarter
or half the bytes of int8; 5–8-bit values as the blocked bytes themselves. `weight_values`
(TE) unpacks them into the blocked bytes, once, when the model is loaded
(`passes/unpack_at_load.py`).

Σ u·w = Σ value·w + bias·Σ w: the kernels subtract bias·Σ w per output channel
(`weight_offset`); padded taps hold value 0 and need no test in the inner loop.

The kernel blocks carry the largest biased activation as the block annotation `DATA_MAX`
(`data_max`) and the largest weight magnitude as `WEIGHT_MAX` (`weight_max`): below 128 the
bytes are also int8, which the Arm schedules need (SDOT multiplies int8 by int8; the NEON
widening schedule sums two products in int16), and where their product stays below 128 the
NEON schedule multiplies bytes into bytes.
"""

import numpy as np
from tvm import te, tirx

from tvmbits.ops.encoding import Encoding

BLOCK = 16  # output channels per weight block (int32 lanes of one 512-bit vector)
DOT = 4  # input channels per dot product (bytes summed into one int32)
DATA_MAX = "tvmbits.data_max"  # kernel block annotation: the largest biased activation byte
WEIGHT_MAX = "tvmbits.weight_max"  # kernel block annotation: the largest weight magnitude
UNPACK = "subbyte_unpack_weight"  # the TE compute (and PrimFunc) that unpacks stored weights


def bias(act: Encoding) -> int:
    """What `subbyte_pack` adds to an activation value: −(its encoding's smallest value)."""
    return -act.value_range[0]


def data_max(act: Encoding) -> int:
    """The largest byte `subbyte_pack` writes for `act`: its value span (bipolar: 2)."""
    low, high = act.value_range
    return high - low


def weight_max(wgt: Encoding) -> int:
    """The largest magnitude of a weight value of `wgt`."""
    return max(abs(value) for value in wgt.value_range)


def field_bits(wgt: Encoding) -> int:
    """Bits a stored weight value of `wgt` takes: 2, 4 or 8."""
    return next(width for width in (2, 4, 8) if wgt.bits <= width)


def per_byte(wgt: Encoding) -> int:
    """Weight values stored in one byte: 4, 2 or 1."""
    return 8 // field_bits(wgt)


def weight_dtype(wgt: Encoding) -> str:
    """dtype of the weight values the kernels multiply: int8, or uint8 for values above 127."""
    return "uint8" if wgt.value_range[1] > 127 else "int8"


def padded_channels(channels: int) -> int:
    """CP: `channels` rounded up to a multiple of DOT."""
    return -(-channels // DOT) * DOT


def packed_weight_bytes(out_channels: int, taps: int, channels: int, wgt: Encoding) -> int:
    """Bytes of `pack_subbyte_weight` for an `[out_channels, *taps, channels]` weight."""
    blocks = -(-out_channels // BLOCK) * BLOCK * taps * padded_channels(channels)
    return blocks // per_byte(wgt)


def subbyte_pack(values: te.Tensor, act: Encoding) -> te.Tensor:
    """Biased uint8 activations (TE compute `subbyte_pack`, layout in the module docstring).

    Parameters
    ----------
    values : te.Tensor
        int32 `[..., C]`: the values, except for bipolar, where they are the 0/1 codes
        (`binarize`'s output).
    act : Encoding
        Their encoding.
    """
    *lead, channels = (int(d) for d in values.shape)
    shift = bias(act)

    def byte(*index):
        *outer, c = index
        value = values(*outer, c)
        biased = value * 2 if act.kind == "bipolar" else value + shift
        if channels % DOT:
            biased = tirx.if_then_else(c < channels, biased, shift)
        return biased.astype("uint8")

    return te.compute((*lead, padded_channels(channels)), byte, name="subbyte_pack")


def block_weight(values: np.ndarray, wgt: Encoding) -> np.ndarray:
    """Integer weight values `[O, *taps, C]` → the blocked bytes the kernels read (module docstring)."""
    values = np.asarray(values).astype(np.int64)
    out_channels, *taps, channels = values.shape
    blocks = -(-out_channels // BLOCK)
    padded = np.zeros((blocks * BLOCK, *taps, padded_channels(channels)), np.int64)
    padded[:out_channels, ..., :channels] = values
    return np.moveaxis(padded.reshape(blocks, BLOCK, *taps, -1, DOT), 1, -2).astype(weight_dtype(wgt))


def pack_subbyte_weight(values: np.ndarray, wgt: Encoding) -> np.ndarray:
    """Integer weight values `[O, *taps, C]` → the blocked layout the model stores (module docstring)."""
    blocked = block_weight(values, wgt)
    count, width = per_byte(wgt), field_bits(wgt)
    if count == 1:
        return blocked
    fields = blocked.astype(np.int64) & ((1 << width) - 1)
    return sum(fields[..., k::count] << (width * k) for k in range(count)).astype(np.uint8)


def weight_values(weight: te.Tensor, wgt: Encoding) -> te.Tensor:
    """The blocked bytes `[..., 16, 4]` (int8/uint8) of a `pack_subbyte_weight` of ≤ 4-bit
    values, unpacked from their 2- or 4-bit fields (TE compute `UNPACK`)."""
    count, width = per_byte(wgt), field_bits(wgt)
    if count == 1:
        raise ValueError(f"{wgt} weights are stored as bytes: there is nothing to unpack")
    signed = wgt.kind != "unsigned"

    def value(*index):
        *outer, k = index
        code = (weight[(*outer, k // count)].astype("int32") >> (width * (k % count))) & ((1 << width) - 1)
        if signed:
            code = code - ((code >> (width - 1)) << width)
        return code.astype(weight_dtype(wgt))

    return te.compute((*weight.shape[:-1], DOT), value, name=UNPACK)


def weight_offset(values: np.ndarray, act: Encoding) -> np.ndarray:
    """int32 `[O]`: bias(act) · Σ w per output channel, what the kernels subtract."""
    values = np.asarray(values).astype(np.int64)
    return (bias(act) * values.reshape(values.shape[0], -1).sum(axis=1)).astype(np.int32)


def weight_offset_te(values: te.Tensor, act: Encoding, out_channels: int) -> te.Tensor:
    """`weight_offset` computed from the blocked weight bytes in the kernel's PrimFunc (when
    the caller does not pass it as a constant): TE compute `subbyte_weight_offset`."""
    *_, lanes, dot = values.shape
    reduce = [te.reduce_axis((0, int(d)), f"r{i}") for i, d in enumerate(values.shape[1:-2])]
    k = te.reduce_axis((0, int(dot)), "rk")

    def total(o):
        value = values[(o // lanes, *reduce, o % lanes, k)].astype("int32")
        return te.sum(bias(act) * value, axis=[*reduce, k])

    return te.compute((out_channels,), total, name="subbyte_weight_offset")


def check_packed(data: te.Tensor, weight: te.Tensor, channels: int, wgt: Encoding) -> None:
    """Raise ValueError unless `data` and the blocked `weight` bytes are laid out for `channels`
    input channels and `wgt`."""
    expected = padded_channels(channels)
    if int(data.shape[-1]) != expected:
        raise ValueError(f"data holds {int(data.shape[-1])} channels, expected {expected} for {channels}")
    held = int(weight.shape[-3]) * DOT
    if (held != expected or int(weight.shape[-2]) != BLOCK or int(weight.shape[-1]) != DOT
            or str(weight.dtype) != weight_dtype(wgt)):
        raise ValueError(f"weight {[int(d) for d in weight.shape]} {weight.dtype} is not blocked "
                         f"for {channels} channels and {wgt}")
