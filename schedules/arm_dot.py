"""AArch64 byte dot products as TIR tensor intrinsics, for the sub-byte kernels: the Arm
counterparts of `vnni.py`'s `vpdpbusd`.

Both compute what `vnni.DOT_16x4` describes, C[i] += Σ_k int32(A[k]) · int32(B[i, k]) for i < 16,
k < 4: A four biased uint8 activations, B a 64-byte block of weights, 16 output channels × 4
input channels (`ops/subbyte.py`'s layout), C 16 int32 accumulators in a register tile. They
hold the block as four 128-bit vectors of 4 channels × 4 inputs; the activations' 4 bytes are one
32-bit lane broadcast to the four.

- `SDOT_16x4` (Armv8.2 dot product, Cortex-A55/A76 and later): four `sdot` (16 signed byte
  MACs each). `UDOT_16x4`, for uint8 weights (unsigned 8-bit), four `udot`.
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

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import target_has_features

from tvmbits.schedules.vnni import dot_16x4_description

SDOT_16x4 = "tvmbits_arm_sdot_16x4"
SDOT_16x16 = "tvmbits_arm_sdot_16x16"  # four SDOT_16x4 steps, 16 input channels: one activation load
UDOT_16x4 = "tvmbits_arm_udot_16x4"
NEON_16x4 = "tvmbits_arm_neon_16x4"
NEON_BYTES_16x4 = "tvmbits_arm_neon_bytes_16x4"
INT8_DATA_MAX = 127  # the largest activation byte the int8 instructions read exactly
ARM_INTRINSICS = (SDOT_16x16, SDOT_16x4, UDOT_16x4, NEON_16x4, NEON_BYTES_16x4)
# 16-lane accumulator vectors (4 registers each) of a conv register tile, of AArch64's 32 vector
# registers: SDOT needs besides them the 4 registers of one weight block and an activation, the
# NEON schedule also its products and pair sums
TILE_BUDGET = {SDOT_16x16: 6, SDOT_16x4: 6, UDOT_16x4: 6, NEON_16x4: 4, NEON_BYTES_16x4: 4}
# Where no tile of two or more pixels fits TILE_BUDGET (a 7×7 output), a 7-pixel tile of 4-channel
# dot-product steps (`wide_dot_tile`): 28 accumulator registers, the weight block's 4 and a
# broadcast activation, one register over (LLVM spills one). On the Cortex-A76 model it took
# ResNet-18's 7×7, 512→512 W4A4 layer from 25.7 M instructions (one pixel, four channel
# vectors: every SDOT loads its weights) to 13.5 M (13.3 with DOT_UNROLL); where 4-pixel tiles
# fit, they stay better. Only where the wider budget does give a multi-pixel tile.
WIDE_DOT_BUDGET = 7
# Reduction steps a dot-product kernel unrolls together (`cpu.UNROLL` elsewhere): with 8, LLVM
# hoists the later steps' loads and spills accumulators (ResNet-18's 28×28, 128→128 W4A4 layer on
# the Cortex-A76 model: 13.6 M instructions with 8, 12.1 with 4, 13.6 with 2; the NEON
# schedules measured no different, so they keep 8)
DOT_UNROLL = 4


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


def _description_16x16():
    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((16,), "uint8", offset_factor=1),
        B: T.Buffer((4, 16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:16], B[0:4, 0:16, 0:4])
            T.writes(C[0:16])
            for j, i, k in T.grid(4, 16, 4):
                with T.sblock("update"):
                    vi = T.axis.spatial(16, i)
                    vc = T.axis.reduce(16, j * 4 + k)
                    C[vi] = C[vi] + T.Cast("int32", A[vc]) * T.Cast("int32", B[vc // 4, vi, vc % 4])

    return func


def _sdot_16x16():
    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((16,), "uint8", offset_factor=1),
        B: T.Buffer((4, 16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:16], B[0:4, 0:16, 0:4])
            T.writes(C[0:16])
            for j in T.unroll(4):
                for q in T.unroll(4):
                    # activations j·4 … j·4+3 from lane j of one 16-byte load: SDOT by element
                    C[T.ramp(q * 4, 1, 4)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
                        C.vload([q * 4], dtype="int32x4"),
                        B.vload([j, q * 4, 0], dtype="int8x16"),
                        T.reinterpret(
                            T.Shuffle([T.reinterpret(A.vload([0], "uint8x16"), dtype="int32x4")], [j, j, j, j]),
                            dtype="int8x16",
                        ),
                        dtype="int32x4",
                    )

    return func


@functools.cache
def register() -> None:
    """Register the intrinsics with TVM, once per process. Parsing their TVMScript takes seconds,
    so it is done by the builds for AArch64 (before tensorizing, or replaying a tuning log's
    schedules), not at import."""
    TensorIntrin.register(SDOT_16x4, dot_16x4_description("int8"), _dot_impl("sdot.v4i32.v16i8", "int8"))
    TensorIntrin.register(UDOT_16x4, dot_16x4_description("uint8"), _dot_impl("udot.v4i32.v16i8", "uint8"))
    TensorIntrin.register(SDOT_16x16, _description_16x16(), _sdot_16x16())
    TensorIntrin.register(NEON_16x4, dot_16x4_description("int8"), _neon_widening())
    TensorIntrin.register(NEON_BYTES_16x4, dot_16x4_description("int8"), _neon_bytes())


def arm_tile_budget(intrinsic: str) -> int:
    """Accumulator vectors of a conv register tile tensorized with `intrinsic`."""
    return TILE_BUDGET[intrinsic]


def is_dot_product(intrinsic: str) -> bool:
    return intrinsic in (SDOT_16x16, SDOT_16x4, UDOT_16x4)


def wide_dot_tile(intrinsic: str) -> tuple[str, int] | None:
    """(intrinsic, budget) of the wide tile (`WIDE_DOT_BUDGET`) for a conv tensorized with the
    dot product `intrinsic`, or None for the NEON schedules, whose products need registers too."""
    if not is_dot_product(intrinsic):
        return None
    return (UDOT_16x4 if intrinsic == UDOT_16x4 else SDOT_16x4), WIDE_DOT_BUDGET


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
