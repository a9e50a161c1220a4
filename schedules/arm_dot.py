"""AArch64 byte dot products as TIR tensor intrinsics, for the sub-byte kernels: the Arm
counterparts of `vnni.py`'s `vpdpbusd`.

All compute what `vnni.DOT_16x4` describes, C[i] += Σ_k int32(A[k]) · int32(B[i, k]) for i < 16,
k < 4: A four biased uint8 activations, B a 64-byte block of weights, 16 output channels × 4
input channels (`ops/subbyte.py`'s layout), C 16 int32 accumulators in a register tile. They
hold the block as four 128-bit vectors of 4 channels × 4 inputs.

- `SDOT_16x4` (Armv8.2 dot product, Cortex-A55/A76 and later): four `sdot` (16 signed byte
  MACs each), the activations' 4 bytes one 32-bit lane broadcast to the four (`ld1r`).
  `UDOT_16x4`, for uint8 weights (unsigned 8-bit), four `udot`.
- `SDOT_LANE_16x4`, `UDOT_LANE_16x4`: the same where the input channels come in whole chunks of
  16 (a multiple of 16 channels, NHWC): the 4 bytes are lane j of their chunk's 16-byte load,
  read by the by-element form (`sdot v.4s, w.16b, a.4b[j]`), so one activation load feeds the
  4 steps of its chunk. The `_8x4` ones compute half a block (8 output channels, 2 `sdot`), for
  tiles of many pixels (`DOT_TILES`).
- `NEON_16x4` (every Armv8 NEON core, Cortex-A53/A72): per 4 channels two `smull` (int8 × int8 →
  int16), an `addp` (pairs of products, int16) and an `sadalp` (pairs into the int32
  accumulators). `NEON_BYTES_16x4`, where every product fits int8 (≤ 4-bit operands: at most
  15 · 8): per 4 channels one `mul` of 16 bytes, an `saddlp` (pairs, int16) and an `sadalp`.

`sdot` and `smull` read the activation bytes as int8, and `addp` sums two products in int16:
both are exact only for activations below 128 (the kernel's `DATA_MAX` annotation says so)
and int8 weights, where |a·w| ≤ 127·128 = 16256 and two of them fit int16; `NEON_BYTES_16x4`
only where DATA_MAX · WEIGHT_MAX ≤ 127.
"""

import functools
from typing import NamedTuple

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import target_has_features

from tvmbits.schedules.vnni import dot_description

SDOT_16x4 = "tvmbits_arm_sdot_16x4"
UDOT_16x4 = "tvmbits_arm_udot_16x4"
SDOT_LANE_16x4 = "tvmbits_arm_sdot_lane_16x4"
UDOT_LANE_16x4 = "tvmbits_arm_udot_lane_16x4"
SDOT_LANE_8x4 = "tvmbits_arm_sdot_lane_8x4"
UDOT_LANE_8x4 = "tvmbits_arm_udot_lane_8x4"
NEON_16x4 = "tvmbits_arm_neon_16x4"
NEON_BYTES_16x4 = "tvmbits_arm_neon_bytes_16x4"
INT8_DATA_MAX = 127  # the largest activation byte the int8 instructions read exactly
LANE_FORMS = (SDOT_LANE_16x4, UDOT_LANE_16x4, SDOT_LANE_8x4, UDOT_LANE_8x4)
DOT_PRODUCTS = (SDOT_16x4, UDOT_16x4, *LANE_FORMS)
ARM_INTRINSICS = (*DOT_PRODUCTS, NEON_16x4, NEON_BYTES_16x4)


class DotTile(NamedTuple):
    """An Arm conv register tile: its intrinsic, the output channels of one of its accumulator
    vectors (`lanes`: 16, or 8 for the half-block intrinsics) and the most accumulator vectors
    it holds (`budget`: what AArch64's 32 vector registers leave besides the operands)."""

    intrinsic: str
    lanes: int
    budget: int


# Per intrinsic, the register tiles in order of preference: a conv takes the first whose tile has
# several pixels (each weight vector loaded once feeds them all), or else the first.
# - The lane forms keep each pixel's 16-byte activation chunk in a register across the chunk's 4
#   steps: P pixels of one 16-channel vector need 4P accumulators, P chunks and the step's 4
#   weight registers, so 5 pixels at most; the half-block form 2P + P + 2, so up to 10 pixels
#   (capped by `cpu.MAX_PIXELS`), for outputs such as 7×7 where no tile of 2–5 pixels fits. On
#   the Cortex-A76 model, ResNet-18's 7×7, 512→512 W4A4 layer took 13.3 M instructions with the
#   broadcast form's 7-pixel tile (28 accumulators: LLVM spilled 3, and each `ld1r` needs its
#   address computed), 56×56, 64→64: 11.5 M with 16-channel steps of 4 pixels by element
#   inside each pixel (LLVM hoisted all 16 weight registers of a chunk: spills).
# - The broadcast forms: 6 vectors (24 accumulators, the block's 4 registers and the activation),
#   7 where that leaves one pixel (28 accumulators, one register over: LLVM spills one).
DOT_TILES = {
    SDOT_LANE_16x4: [DotTile(SDOT_LANE_16x4, 16, 5), DotTile(SDOT_LANE_8x4, 8, 10)],
    UDOT_LANE_16x4: [DotTile(UDOT_LANE_16x4, 16, 5), DotTile(UDOT_LANE_8x4, 8, 10)],
    SDOT_16x4: [DotTile(SDOT_16x4, 16, 6), DotTile(SDOT_16x4, 16, 7)],
    UDOT_16x4: [DotTile(UDOT_16x4, 16, 6), DotTile(UDOT_16x4, 16, 7)],
    NEON_16x4: [DotTile(NEON_16x4, 16, 4)],  # besides the accumulators: products and pair sums
    NEON_BYTES_16x4: [DotTile(NEON_BYTES_16x4, 16, 4)],
}
# Reduction steps (4 channels each) a kernel unrolls together (`cpu.UNROLL` elsewhere): two
# 16-channel chunks for the lane forms (ResNet-18's 28×28, 128→128 W4A4 layer on the Cortex-A76
# model: 11.12 M instructions with 4, 10.75 with 8, 10.95 with 16); 4 for the broadcast forms,
# where with 8 LLVM hoisted the later steps' loads and spilled accumulators; the NEON schedules
# measured no different, so they keep `cpu.UNROLL`
DOT_UNROLL = {SDOT_LANE_16x4: 8, UDOT_LANE_16x4: 8, SDOT_LANE_8x4: 8, UDOT_LANE_8x4: 8,
              SDOT_16x4: 4, UDOT_16x4: 4}


def _dot_impl(instruction: str, weight: str):
    dtype16 = f"{weight}x16"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), weight, offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for q in T.unroll(4):
                C[T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(f"llvm.aarch64.neon.{instruction}"),
                    C.vload([q * 4], dtype="int32x4"),
                    B.vload([q * 4, 0], dtype=dtype16),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 4), dtype=dtype16),
                    dtype="int32x4",
                )

    return impl


def _neon_widening():
    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for q in T.unroll(4):
                # channels 4q, 4q+1 (low) and 4q+2, 4q+3 (high): 8 int16 products each
                low = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 2), dtype="int8x8"),
                    B.vload([q * 4, 0], dtype="int8x8"),
                    dtype="int16x8",
                )
                high = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 2), dtype="int8x8"),
                    B.vload([q * 4 + 2, 0], dtype="int8x8"),
                    dtype="int16x8",
                )
                # [c0 k0+k1, c0 k2+k3, c1 .., c1 .., c2 .., c2 .., c3 .., c3 ..]: each |sum| ≤ 32512
                pairs = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v8i16"), low, high, dtype="int16x8"
                )
                C[T.ramp(q * 4, 1, 4)] = C.vload([q * 4], dtype="int32x4") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), pairs, dtype="int32x4"
                )

    return func


def _neon_bytes():
    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for q in T.unroll(4):
                # 16 products of channels 4q … 4q+3 × 4 inputs, each in a byte (|a·w| ≤ 127)
                products = B.vload([q * 4, 0], dtype="int8x16") * T.reinterpret(
                    T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 4), dtype="int8x16"
                )
                pairs = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v8i16.v16i8"), products, dtype="int16x8"
                )
                C[T.ramp(q * 4, 1, 4)] = C.vload([q * 4], dtype="int32x4") + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), pairs, dtype="int32x4"
                )

    return func


def _lane_impl(instruction: str, weight: str, lanes: int):
    """`lanes`/4 dot products by element: the 4 activation bytes (A, at a multiple of 4) are lane
    (offset mod 16) / 4 of the 16-byte chunk they lie in, loaded whole (the same load for the
    chunk's 4 steps, which LLVM merges); the lane is a constant once the steps are unrolled."""
    dtype16 = f"{weight}x16"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=4),
        B: T.Buffer((lanes, 4), weight, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            chunk = T.decl_buffer((16,), "uint8", data=A.data, elem_offset=A.elem_offset - T.floormod(A.elem_offset, 16))
            for q in T.unroll(lanes // 4):
                C[T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(f"llvm.aarch64.neon.{instruction}"),
                    C.vload([q * 4], dtype="int32x4"),
                    B.vload([q * 4, 0], dtype=dtype16),
                    T.reinterpret(
                        T.Shuffle([T.reinterpret(chunk.vload([0], "uint8x16"), dtype="int32x4")],
                                  [T.floordiv(T.floormod(A.elem_offset, 16), 4)] * 4),
                        dtype=dtype16,
                    ),
                    dtype="int32x4",
                )

    return impl


@functools.cache
def register() -> None:
    """Register the intrinsics with TVM, once per process. Parsing their TVMScript takes seconds,
    so it is done by the builds for AArch64 (before tensorizing, or replaying a tuning log's
    schedules), not at import."""
    for name, instruction, weight in ((SDOT_16x4, "sdot", "int8"), (UDOT_16x4, "udot", "uint8")):
        TensorIntrin.register(name, dot_description(weight), _dot_impl(f"{instruction}.v4i32.v16i8", weight))
    for names, instruction, weight in (((SDOT_LANE_16x4, SDOT_LANE_8x4), "sdot", "int8"),
                                       ((UDOT_LANE_16x4, UDOT_LANE_8x4), "udot", "uint8")):
        for name, lanes in zip(names, (16, 8)):
            TensorIntrin.register(name, dot_description(weight, lanes),
                                  _lane_impl(f"{instruction}.v4i32.v16i8", weight, lanes))
    TensorIntrin.register(NEON_16x4, dot_description("int8"), _neon_widening())
    TensorIntrin.register(NEON_BYTES_16x4, dot_description("int8"), _neon_bytes())


def dot_tiles(intrinsic: str, chunked: bool) -> list[DotTile]:
    """The register tiles (`DOT_TILES`) of a conv whose DOT steps `arm_intrinsic` tensorizes with
    `intrinsic`: the lane forms where its input channels come in whole 16-channel chunks."""
    lane = {SDOT_16x4: SDOT_LANE_16x4, UDOT_16x4: UDOT_LANE_16x4}.get(intrinsic)
    return DOT_TILES[lane if chunked and lane else intrinsic]


def chunk_steps(intrinsic: str) -> int:
    """Reduction steps (4 channels each) a kernel tensorized with `intrinsic` must unroll together:
    a lane form's chunk of 4, whose lanes are constants of the instruction; 1 for the others."""
    return 4 if intrinsic in LANE_FORMS else 1


def is_aarch64(target: Target) -> bool:
    """Whether `target` is an AArch64 CPU (TVM's `feature.is_aarch64`, from the triple)."""
    return target.kind.name == "llvm" and bool(target.attrs.get("feature.is_aarch64", False))


def has_dotprod(target: Target) -> bool:
    """Whether `target` is an AArch64 CPU with the Armv8.2 dot product (SDOT/UDOT)."""
    return is_aarch64(target) and target_has_features("dotprod", target)


def arm_intrinsic(target: Target, data: str, weight: str, data_max: int | None,
                  weight_max: int | None = None) -> str | None:
    """The tensor intrinsic for a sub-byte kernel on an AArch64 `target`, reading `data` bytes up
    to `data_max` and `weight` bytes (dtypes) of magnitude up to `weight_max`; None where none is
    exact (activations of 128 and more, or not AArch64)."""
    if not is_aarch64(target) or data != "uint8":
        return None
    dot = has_dotprod(target)
    if weight == "uint8":
        return UDOT_16x4 if dot else None
    if weight != "int8" or data_max is None or data_max > INT8_DATA_MAX:
        return None
    if dot:
        return SDOT_16x4
    small = weight_max is not None and data_max * weight_max <= INT8_DATA_MAX
    return NEON_BYTES_16x4 if small else NEON_16x4
