"""Operands of the sub-byte (byte dot-product) kernels, `subbyte_conv2d` and `subbyte_dense`.

The kernels multiply one byte of activation by one byte of weight and sum in int32: the shape
of the byte dot-product instructions (x86 VNNI `vpdpbusd`: 16 int32 sums, each of 4 uint8 × int8
products, per instruction), which the x86 schedule tensorizes when the CPU has them.

Activations (`subbyte_pack`, TE, per call): uint8 `[..., CP]`, CP = C rounded up to a multiple
of `DOT` (4), one *biased* value per byte: u = value + `bias(act)`, bias = −(smallest value) of
the encoding (bipolar 1, so u ∈ {0, 2}; signed k-bit 2^(k−1); unsigned 0), so u ∈ 0 … 255.
Padding (channels up to CP, and the pixels a conv pads with) is u = bias: value 0.

Weights (`pack_subbyte_weight`, numpy, at compile time): values blocked as
`[ceil(O/16), *taps, CP/4, 16, 4]`: 16 output channels (`BLOCK`) × 4 consecutive input
channels, 64 bytes, the weight operand of one dot-product instruction; padded output and input
channels are value 0. Values ≤ 4 bits are stored two per byte: the block's last axis is
`[2]`, input channel 2j in the low nibble and 2j+1 in the high nibble, as 4-bit two's
complement (unsigned encodings: plain 4-bit), half the bytes of int8. 5–8-bit values are stored
as int8 (uint8 for unsigned 8-bit, whose values pass 127). `weight_values` reads them back.

Σ u·w = Σ value·w + bias·Σ w: the kernels subtract bias·Σ w per output channel
(`weight_offset`); padded taps hold value 0 and need no test in the inner loop.
"""

import numpy as np
from tvm import te, tirx

from tvmbits.ops.encoding import Encoding

BLOCK = 16  # output channels per weight block (int32 lanes of one 512-bit vector)
DOT = 4  # input channels per dot product (bytes summed into one int32)
NIBBLE = 4


def bias(act: Encoding) -> int:
    """What `subbyte_pack` adds to an activation value: −(its encoding's smallest value)."""
    return -act.value_range[0]


def nibbles(wgt: Encoding) -> bool:
    """Whether weights of `wgt` are stored two per byte."""
    return wgt.bits <= NIBBLE


def weight_dtype(wgt: Encoding) -> str:
    """dtype of the weight values the kernels multiply: int8, or uint8 for values above 127."""
    return "uint8" if wgt.value_range[1] > 127 else "int8"


def padded_channels(channels: int) -> int:
    """CP: `channels` rounded up to a multiple of DOT."""
    return -(-channels // DOT) * DOT


def packed_weight_bytes(out_channels: int, taps: int, channels: int, wgt: Encoding) -> int:
    """Bytes of `pack_subbyte_weight` for an `[out_channels, *taps, channels]` weight."""
    blocks = -(-out_channels // BLOCK) * BLOCK * taps * padded_channels(channels)
    return blocks // 2 if nibbles(wgt) else blocks


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


def pack_subbyte_weight(values: np.ndarray, wgt: Encoding) -> np.ndarray:
    """Integer weight values `[O, *taps, C]` → the blocked layout of the module docstring."""
    values = np.asarray(values).astype(np.int64)
    out_channels, *taps, channels = values.shape
    blocks = -(-out_channels // BLOCK)
    padded = np.zeros((blocks * BLOCK, *taps, padded_channels(channels)), np.int64)
    padded[:out_channels, ..., :channels] = values
    blocked = np.moveaxis(padded.reshape(blocks, BLOCK, *taps, -1, DOT), 1, -2)
    if not nibbles(wgt):
        return blocked.astype(weight_dtype(wgt))
    codes = blocked & 0xF
    return (codes[..., 0::2] | (codes[..., 1::2] << NIBBLE)).astype(np.uint8)


def weight_values(weight: te.Tensor, wgt: Encoding) -> te.Tensor:
    """The blocked weight as int8/uint8 values `[..., 16, 4]`: `weight` itself for 5–8 bits,
    unpacked from nibbles (TE compute `subbyte_unpack_weight`, once per call) for ≤ 4 bits."""
    if not nibbles(wgt):
        return weight
    signed = wgt.kind != "unsigned"

    def value(*index):
        *outer, k = index
        code = (weight[(*outer, k // 2)].astype("int32") >> (NIBBLE * (k % 2))) & 0xF
        if signed:
            code = code - ((code >> (NIBBLE - 1)) << NIBBLE)
        return code.astype(weight_dtype(wgt))

    return te.compute((*weight.shape[:-1], DOT), value, name="subbyte_unpack_weight")


def weight_offset(values: np.ndarray, act: Encoding) -> np.ndarray:
    """int32 `[O]`: bias(act) · Σ w per output channel, what the kernels subtract."""
    values = np.asarray(values).astype(np.int64)
    return (bias(act) * values.reshape(values.shape[0], -1).sum(axis=1)).astype(np.int32)


def weight_offset_te(values: te.Tensor, act: Encoding, out_channels: int) -> te.Tensor:
    """`weight_offset` computed from the blocked `weight_values` in the kernel's PrimFunc (when
    the caller does not pass it as a constant): TE compute `subbyte_weight_offset`."""
    *_, lanes, dot = values.shape
    reduce = [te.reduce_axis((0, int(d)), f"r{i}") for i, d in enumerate(values.shape[1:-2])]
    k = te.reduce_axis((0, int(dot)), "rk")

    def total(o):
        return te.sum(values[(o // lanes, *reduce, o % lanes, k)].astype("int32"), axis=[*reduce, k])

    sums = te.compute((out_channels,), total, name="subbyte_weight_sum")
    return te.compute((out_channels,), lambda o: bias(act) * sums[o], name="subbyte_weight_offset")


def check_packed(data: te.Tensor, weight: te.Tensor, channels: int, wgt: Encoding) -> None:
    """Raise ValueError unless `data` and `weight` are laid out for `channels` input channels."""
    expected = padded_channels(channels)
    if int(data.shape[-1]) != expected:
        raise ValueError(f"data holds {int(data.shape[-1])} channels, expected {expected} for {channels}")
    held = int(weight.shape[-3]) * DOT
    last = DOT // 2 if nibbles(wgt) else DOT
    if held != expected or int(weight.shape[-2]) != BLOCK or int(weight.shape[-1]) != last:
        raise ValueError(f"weight of shape {[int(d) for d in weight.shape]} is not blocked for {channels} channels and {wgt}")
