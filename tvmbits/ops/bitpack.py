"""Bit-plane packing of integer codes along the last (channel) axis into uint32 words.

Layout: codes `[..., C]` → packed `[..., bits, ceil(C/32)]` uint32, where bit b of word w of
plane i is bit i of the code at channel 32·w + b. Channels ≥ C (the tail of the last word) are 0
bits in every plane; the bit-serial kernels rely on that. Codes are read as two's complement,
so int32 signed *values* pack the same as their k-bit codes.

With `padding` (top, left, bottom, right), NHWC codes `[N, H, W, C]` pack into
`[N, top + H + bottom, left + W + right, bits, ceil(C/32)]` with zero words around the packed
pixels: the input a padded bit-serial conv reads (`bitserial_conv2d_nhwc(padded_input=True)`),
written by its producer, so that the conv needs no padded copy of its own. The words are one
compute, zero where the padding is; `fill_then_pack` splits its PrimFunc into a zero fill of
the output and the packing of the pixels into it.

`bitpack` is the TE compute run on activations; `pack_bits` is the numpy twin used to pack
constant weights at compile time. Both give identical words.
"""

import numpy as np
from tvm import s_tir, te, tirx

from tvmbits.ops.encoding import Encoding

WORD_BITS = 32
ZERO_FILL = "bitpack_pad_const"  # the block `fill_then_pack` adds
# `bitpack` gathers a word's bits in two steps: LANES partial words, each with the bits of the
# channels ≡ lane (mod LANES), then their OR. The first step reads LANES consecutive codes at a
# time, so a schedule can make it vector loads, compares and shifts over channels (a word
# written as one 32-term expression gets vectorised across words instead, with gathers).
LANES = 16


def words(channels: int) -> int:
    """Number of uint32 words that hold `channels` bits."""
    return -(-channels // WORD_BITS)


def check_packed(packed: te.Tensor, encoding: Encoding, channels: int, what: str) -> None:
    """Raise ValueError unless `packed` ends in `[encoding.bits, words(channels)]`."""
    planes, packed_words = (int(d) for d in packed.shape[-2:])
    if (planes, packed_words) != (encoding.bits, words(channels)):
        raise ValueError(
            f"{what} packed as {planes} planes × {packed_words} words, expected "
            f"{encoding.bits} × {words(channels)} for {encoding} and {channels} channels"
        )


def bitpack(codes: te.Tensor, bits: int, padding: tuple[int, int, int, int] = (0, 0, 0, 0)) -> te.Tensor:
    """Pack the low `bits` bits of integer `codes` along the last axis (TE compute `bitpack`).

    Parameters
    ----------
    codes : te.Tensor
        Integer tensor `[..., C]`; NHWC `[N, H, W, C]` where `padding` is not all zero.
    bits : int
        Number of bit planes (1 … 8).
    padding : (int, int, int, int)
        (top, left, bottom, right) rows and columns of zero words around the packed pixels.

    Returns
    -------
    te.Tensor
        uint32 `[..., bits, ceil(C/32)]`, or `[N, top + H + bottom, left + W + right, bits,
        ceil(C/32)]` with `padding`.
    """
    *lead, channels = (int(d) for d in codes.shape)

    def lane_bits(*index):
        *outer, plane, w, lane = index
        value = tirx.const(0, "uint32")
        for half in range(WORD_BITS // LANES):
            channel = w * WORD_BITS + half * LANES + lane
            bit = (codes(*outer, channel).astype("uint32") >> plane.astype("uint32")) & tirx.const(1, "uint32")
            if channels % WORD_BITS:
                bit = tirx.if_then_else(channel < channels, bit, tirx.const(0, "uint32"))
            value = value | (bit << (lane + half * LANES).astype("uint32"))
        return value

    lanes = te.compute((*lead, bits, words(channels), LANES), lane_bits, name="bitpack_lanes")

    def word(*index):
        packed = tirx.const(0, "uint32")
        for lane in range(LANES):
            packed = packed | lanes(*index, lane)
        return packed

    if not any(padding):
        return te.compute((*lead, bits, words(channels)), word, name="bitpack")
    if len(lead) != 3:
        raise ValueError(f"padded bitpack packs NHWC codes, got shape {[*lead, channels]}")
    batch, height, width = lead
    top, left, bottom, right = (int(p) for p in padding)

    def padded(n, y, x, plane, w):
        inside = tirx.all(y >= top, y < top + height, x >= left, x < left + width)
        return tirx.if_then_else(inside, word(n, y - top, x - left, plane, w), tirx.const(0, "uint32"))

    shape = (batch, top + height + bottom, left + width + right, bits, words(channels))
    return te.compute(shape, padded, name="bitpack")


def fill_then_pack(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func`, a PrimFunc of a padded `bitpack`, with its words split into a fill of the whole
    output with zero words (block `ZERO_FILL`) and then the packing of the pixels into it, whose
    loops run over the pixels alone, as an unpadded packing's do (TVM's `decompose_padding`,
    applied here, once, rather than by the schedules: TVM 0.27 cannot print a schedule trace
    holding it, which MetaSchedule does). Marked injective (op_pattern 2) as the unsplit
    packing is: TVM's analysis takes two blocks writing one buffer as opaque, and FuseOps would
    then not fuse the binarize or quantize before it into it."""
    sch = s_tir.Schedule(func)
    words = sch.get_sblock("bitpack")
    sch.decompose_padding(words, sch.get_loops(words)[0])
    return sch.mod["main"].with_attr("op_pattern", 2)


def pack_bits(codes: np.ndarray, bits: int, padding: tuple[int, int, int, int] = (0, 0, 0, 0)) -> np.ndarray:
    """Numpy twin of `bitpack`: integer `[..., C]` → uint32 `[..., bits, ceil(C/32)]`, with
    `padding` around the pixels of NHWC codes as `bitpack` has it."""
    codes = np.asarray(codes).astype(np.int64)
    *lead, channels = codes.shape
    padded = np.zeros((*lead, words(channels) * WORD_BITS), np.int64)
    padded[..., :channels] = codes
    planes = (padded[..., None, :] >> np.arange(bits)[:, None]) & 1  # [..., bits, CW·32]
    planes = planes.reshape(*lead, bits, -1, WORD_BITS).astype(np.uint64)
    packed = (planes << np.arange(WORD_BITS, dtype=np.uint64)).sum(axis=-1).astype(np.uint32)
    top, left, bottom, right = padding
    if not any(padding):
        return packed
    return np.pad(packed, [(0, 0), (top, bottom), (left, right), (0, 0), (0, 0)])
