"""Sub-byte storage of integer codes along the last (channel) axis, and reading them back.

Layout: codes `[..., C]` → uint8 `[..., CB]`. For bits ≤ 4 two codes share a byte, channel 2k
in the low nibble and 2k+1 in the high nibble (as ONNX INT4), CB = ceil(C/2), and a missing
channel 2k+1 of an odd C is 0. For 5–8 bits a code fills a byte, CB = C. Only the low `bits`
bits of each code are kept, so int32 signed *values* pack the same as their k-bit codes.

`subbyte_pack` is the TE compute run on activations; `pack_subbyte` is the numpy twin used to
pack constant weights at compile time; `value_at` is how the sub-byte kernels read a value.
"""

import numpy as np
from tvm import te, tirx
from tvm.ir import Expr

from tvmbits.ops.encoding import Encoding

NIBBLE = 4


def per_byte(bits: int) -> int:
    """Codes stored in one byte: 2 for bits ≤ 4, else 1."""
    return 2 if bits <= NIBBLE else 1


def packed_bytes(channels: int, bits: int) -> int:
    """CB, the bytes that hold `channels` codes of `bits` bits."""
    return -(-channels // per_byte(bits))


def subbyte_pack(codes: te.Tensor, bits: int) -> te.Tensor:
    """Pack the low `bits` bits of integer `codes` along the last axis (TE compute `subbyte_pack`).

    Parameters
    ----------
    codes : te.Tensor
        Integer tensor `[..., C]`.
    bits : int
        Code width (1 … 8).

    Returns
    -------
    te.Tensor
        uint8 `[..., CB]` (layout in the module docstring).
    """
    *lead, channels = (int(d) for d in codes.shape)
    mask = tirx.const((1 << bits) - 1, "int32")

    def byte(*index):
        *outer, b = index
        if per_byte(bits) == 1:
            return (codes(*outer, b).astype("int32") & mask).astype("uint8")
        low = codes(*outer, 2 * b).astype("int32") & mask
        high = codes(*outer, 2 * b + 1).astype("int32") & mask
        if channels % 2:
            high = tirx.if_then_else(2 * b + 1 < channels, high, 0)
        return (low | (high << NIBBLE)).astype("uint8")

    return te.compute((*lead, packed_bytes(channels, bits)), byte, name="subbyte_pack")


def pack_subbyte(codes: np.ndarray, bits: int) -> np.ndarray:
    """Numpy twin of `subbyte_pack`: integer `[..., C]` → uint8 `[..., CB]`."""
    codes = np.asarray(codes).astype(np.int64) & ((1 << bits) - 1)
    if per_byte(bits) == 1:
        return codes.astype(np.uint8)
    *lead, channels = codes.shape
    padded = np.zeros((*lead, 2 * packed_bytes(channels, bits)), np.int64)
    padded[..., :channels] = codes
    return (padded[..., 0::2] | (padded[..., 1::2] << NIBBLE)).astype(np.uint8)


def value_at(packed: te.Tensor, outer: tuple, channel: Expr, encoding: Encoding) -> Expr:
    """int32 value of the code at `packed[*outer, <channel>]`, unpacked and decoded in registers."""
    bits = encoding.bits
    if per_byte(bits) == 1:
        code = packed[(*outer, channel)].astype("int32")
    else:
        byte = packed[(*outer, channel // 2)].astype("int32")
        code = tirx.Select(channel % 2 == 0, byte, byte >> NIBBLE) & ((1 << bits) - 1)
    return encoding.value_of(code)


def check_packed(packed: te.Tensor, encoding: Encoding, channels: int, what: str) -> None:
    """Raise ValueError unless `packed` ends in `[packed_bytes(channels, encoding.bits)]`."""
    expected = packed_bytes(channels, encoding.bits)
    if int(packed.shape[-1]) != expected:
        raise ValueError(
            f"{what} packed into {int(packed.shape[-1])} bytes, expected {expected} "
            f"for {encoding} and {channels} channels"
        )
