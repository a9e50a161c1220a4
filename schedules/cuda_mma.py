"""Tensor-core MMA of the low-bit GEMMs as TIR tensor intrinsics (PTX `mma.sync.aligned.m8n8k*`).

One warp multiplies an 8 × K tile of A (rows, reduction contiguous: row-major) by an 8 × K tile
of B (columns, reduction contiguous: B's "col" layout) into 8 × 8 int32 accumulators:

- `MMA_B1`: K = 128 bits held as 4 uint32 words per row, C += popc(A ∧ B)
  (`mma...m8n8k128.row.col.s32.b1.b1.s32.and.popc`, sm_80+; BMMA in SASS);
- `MMA_U8S8` / `MMA_U8U8`: K = 16 bytes, C += uint8 A × int8 (uint8) B
  (`mma...m8n8k16.row.col.s32.u8.s8.s32`, sm_75+; IMMA in SASS).

In both shapes lane t of the warp holds 32 bits of A, row t // 4, reduction bits/bytes
(t % 4)·32 … +31, the same of B (column t // 4), and the accumulators C[t // 4, 2·(t % 4) + l],
l = 0, 1. A and B are read by each lane from shared memory straight into the MMA's registers
(one 32-bit load per lane: the tile of one 8 × 4 word block is that block flattened), through
`access_ptr`, so that TVM's shared-memory synchronisation sees the reads. C lives in
"warp" memory laid out `[32 lanes, 2]` (`ACCUMULATOR_LAYOUT`), which TVM's LowerWarpMemory turns
into two registers per lane; `FILL` zeroes it, `STORE_*` writes it to an 8 × 8 int32 tile of
global or shared memory.
"""

import functools

from tvm.script import tirx as T
from tvm.s_tir import TensorIntrin

WARP = 32
M = N = 8
LOCAL = M * N // WARP  # accumulators per lane

MMA_B1 = "tvmbits_mma_m8n8k128_b1_and_popc"
MMA_U8S8 = "tvmbits_mma_m8n8k16_u8s8"
MMA_U8U8 = "tvmbits_mma_m8n8k16_u8u8"
FILL = "tvmbits_mma_m8n8_fill_s32"
STORE_GLOBAL = "tvmbits_mma_m8n8_store_s32_global"
STORE_SHARED = "tvmbits_mma_m8n8_store_s32_shared"

# (input dtype, reduction elements per tile row, PTX shape, PTX operand types, bit operator)
SHAPES = {
    MMA_B1: ("uint32", "uint32", 4, "m8n8k128", "int1", "int1", "and"),
    MMA_U8S8: ("uint8", "int8", 16, "m8n8k16", "uint8", "int8", None),
    MMA_U8U8: ("uint8", "uint8", 16, "m8n8k16", "uint8", "uint8", None),
}
REDUCTION = {name: shape[2] for name, shape in SHAPES.items()}  # elements of A's tile rows


def accumulator_layout(i, j):
    """(lane, register) of accumulator C[i, j] in an 8 × 8 tile (the PTX fragment layout)."""
    return i * 4 + j // 2, j % 2


def _mma(a_dtype: str, b_dtype: str, k: int, shape: str, a_ptx: str, b_ptx: str, bit_op):
    per_lane = k // 4  # elements of a row one lane holds (32 bits)

    def product(a, b):
        if bit_op == "and":
            return T.Cast("int32", T.popcount(a & b))
        return T.Cast("int32", a) * T.Cast("int32", b)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (M, k), a_dtype, offset_factor=1, scope="shared")
        B = T.match_buffer(b, (N, k), b_dtype, offset_factor=1, scope="shared")
        C = T.match_buffer(c, (WARP, LOCAL), "int32", offset_factor=1, scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:LOCAL], A[0:M, 0:k], B[0:N, 0:k])
            T.writes(C[0:WARP, 0:LOCAL])
            for i, j, r in T.grid(M, N, k):
                with T.sblock("C"):
                    vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                    lane, local = T.meta_var(accumulator_layout(vi, vj))
                    T.reads(C[lane, local], A[vi, vr], B[vj, vr])
                    T.writes(C[lane, local])
                    C[lane, local] = C[lane, local] + product(A[vi, vr], B[vj, vr])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa, sb = T.int32(), T.int32()
        A = T.match_buffer(a, (M, k), a_dtype, offset_factor=1, scope="shared", strides=[sa, 1])
        B = T.match_buffer(b, (N, k), b_dtype, offset_factor=1, scope="shared", strides=[sb, 1])
        C = T.match_buffer(c, (WARP, LOCAL), "int32", offset_factor=1, scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:LOCAL], A[0:M, 0:k], B[0:N, 0:k])
            T.writes(C[0:WARP, 0:LOCAL])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                T.evaluate(
                    T.ptx_legacy.mma(
                        shape, "row", "col", a_ptx, b_ptx, "int32",
                        A.access_ptr("r", offset=tx // 4 * sa + tx % 4 * per_lane), 0,
                        B.access_ptr("r", offset=tx // 4 * sb + tx % 4 * per_lane), 0,
                        C.data, C.elem_offset + tx * LOCAL,
                        False, bit_op, dtype="int32",
                    )
                )

    return desc, impl


def _fill():
    @T.prim_func(s_tir=True)
    def desc(c: T.handle) -> None:
        C = T.match_buffer(c, (WARP, LOCAL), "int32", offset_factor=1, scope="warp")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:WARP, 0:LOCAL])
            for i, j in T.grid(M, N):
                with T.sblock("init"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    lane, local = T.meta_var(accumulator_layout(vi, vj))
                    T.reads()
                    T.writes(C[lane, local])
                    C[lane, local] = T.int32(0)

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        C = T.match_buffer(c, (WARP, LOCAL), "int32", offset_factor=1, scope="warp")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:WARP, 0:LOCAL])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                T.evaluate(T.cuda.mma_fill_legacy(LOCAL, C.data, C.elem_offset, dtype="int32"))

    return desc, impl


def _store(scope: str):
    @T.prim_func(s_tir=True)
    def desc(c: T.handle, d: T.handle) -> None:
        C = T.match_buffer(c, (WARP, LOCAL), "int32", offset_factor=1, scope="warp")
        D = T.match_buffer(d, (M, N), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:LOCAL])
            T.writes(D[0:M, 0:N])
            for i, j in T.grid(M, N):
                with T.sblock("store"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    lane, local = T.meta_var(accumulator_layout(vi, vj))
                    T.reads(C[lane, local])
                    T.writes(D[vi, vj])
                    D[vi, vj] = C[lane, local]

    @T.prim_func(s_tir=True)
    def impl(c: T.handle, d: T.handle) -> None:
        sd = T.int32()
        C = T.match_buffer(c, (WARP, LOCAL), "int32", offset_factor=1, scope="warp")
        D = T.match_buffer(d, (M, N), "int32", offset_factor=1, scope=scope, strides=[sd, 1])
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:LOCAL])
            T.writes(D[0:M, 0:N])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                for local in T.serial(LOCAL):
                    D[tx // 4, tx % 4 * LOCAL + local] = C[tx, local]

    return desc, impl


@functools.cache
def register() -> None:
    """Register the intrinsics with TVM, once per process. Parsing their TVMScript takes seconds,
    so it is done by the CUDA builds (before tensorizing, or replaying a tuning log's schedules),
    not at import."""
    for name, shape in SHAPES.items():
        TensorIntrin.register(name, *_mma(*shape))
    TensorIntrin.register(FILL, *_fill())
    TensorIntrin.register(STORE_GLOBAL, *_store("global"))
    TensorIntrin.register(STORE_SHARED, *_store("shared"))
