"""x86 VNNI byte dot products as a TIR tensor intrinsic, for the sub-byte kernels.

`DOT_16x4` computes C[i] += Σ_k int32(A[k]) · int32(B[i, k]) for i < 16, k < 4: A four uint8
activations (one int32, broadcast to every lane), B a 64-byte block of int8 weights, 16 output
channels × 4 input channels (`ops/subbyte.py`'s weight layout), C 16 int32 accumulators held in a
register tile ("local"). It is one `vpdpbusd` (AVX512-VNNI) on 512-bit vectors: no
intermediate saturates, so the sum is exact for every uint8 × int8 operand.
"""

import functools

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import target_has_features

DOT_16x4 = "tvmbits_vnni_dot_16x4"


def dot_description(weight: str, lanes: int = 16):
    """What a `lanes`×4 dot-product block computes (module docstring, for `lanes` output
    channels), with `weight` int8 or uint8 weights: the description the x86 and the Arm
    intrinsics share."""

    @T.prim_func(s_tir=True)
    def description(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), weight, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])

    return description


@functools.cache
def register() -> None:
    """Register `DOT_16x4` with TVM, once per process. Parsing the TVMScript takes a second, so it
    is done by the builds that tensorize (and before a tuning log's schedules are replayed), not
    at import."""

    @T.prim_func(s_tir=True)
    def _vpdpbusd(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16), dtype="int8x64"),
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    TensorIntrin.register(DOT_16x4, dot_description("int8"), _vpdpbusd)


def has_vnni(target: Target) -> bool:
    """Whether `target` is an x86 CPU with AVX512-VNNI (`vpdpbusd` on 512-bit vectors)."""
    return target.kind.name == "llvm" and target_has_features(["avx512vnni", "avx512bw"], target)
