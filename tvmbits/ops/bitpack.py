"""Bit-plane packing of integer codes along the last (channel) axis into uint32 words.

Layout: codes `[..., C]` → packed `[..., bits, ceil(C/32)]` uint32, where bit b of word w of
plane i is bit i of the code at channel 32·w + b. Channels ≥ C (the tail of the last word) are 0
bits in every plane; the bit-serial kernels rely on that. Codes are read as two's complement,
so int32 signed *values* pack the same as their k-bit codes.

`bitpack` is the TE compute run on activations; `pack_bits` is the numpy twin used to pack
constant weights at compile time. Both give identical words.
"""

import numpy as np
from tvm import te, tirx

from tvmbits.ops.encoding import Encoding

WORD_BITS = 32
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


def bitpack(codes: te.Tensor, bits: int) -> te.Tensor:
    """Pack the low `bits` bits of integer `codes` along the last axis (TE compute `bitpack`).

    Parameters
    ----------
    codes : te.Tensor
        Integer tensor `[..., C]`.
    bits : int
        Number of bit planes (1 … 8).

    Returns
    -------
    te.Tensor
        uint32 `[..., bits, ceil(C/32)]`.
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

    return te.compute((*lead, bits, words(channels)), word, name="bitpack")


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Numpy twin of `bitpack`: integer `[..., C]` → uint32 `[..., bits, ceil(C/32)]`."""
    codes = np.asarray(codes).astype(np.int64)
    *lead, channels = codes.shape
    padded = np.zeros((*lead, words(channels) * WORD_BITS), np.int64)
    padded[..., :channels] = codes
    planes = (padded[..., None, :] >> np.arange(bits)[:, None]) & 1  # [..., bits, CW·32]
    planes = planes.reshape(*lead, bits, -1, WORD_BITS).astype(np.uint64)
    return (planes << np.arange(WORD_BITS, dtype=np.uint64)).sum(axis=-1).astype(np.uint32)
