"""Default CUDA schedules of the low-bit kernels, as dlight rules (a sound start, not tuned).

On CUDA targets the compiler lowers bit-serial layers to the AND-popcount GEMM form
(`ops/bitserial_gemm.py`, block `bitserial_gemm`: rows = pixels × activation planes, columns =
output channels × weight planes, reduction = taps × uint32 words) and sub-byte layers to the byte
GEMM form (`ops/subbyte_gemm.py`, block `subbyte_gemm`: uint8 activations × int8/uint8 weights
over taps × channels). `LowBitCUDA` schedules a PrimFunc holding one such GEMM block:

- the GEMM is padded (`pad_einsum`) to whole thread-block tiles; padded rows, columns and
  reduction steps read 0 words / 0 bytes, which add nothing;
- a thread block of WARPS_M × WARPS_N warps computes a BM × BN tile, each warp MI × NI MMA tiles
  of 8 × 8 int32 accumulators held in registers ("warp" memory, two per lane per tile) for the
  whole reduction; the reduction runs in steps of STEPS MMA depths (128 bits or 16 bytes each),
  whose A and B tiles the block's threads copy into shared memory first (the im2col and weight
  reordering computes, and the conv's padding, are inlined into that copy, so neither is
  written to global memory), rows padded so that an MMA's operand loads are free of bank
  conflicts; small GEMMs get fewer warps and tiles (`_tile`);
- with tensor cores (`mma_intrinsic`: sm_80+ for 1-bit, where PTX has `.and.popc`; sm_75+ for
  bytes) each 8 × 8 × K step is one `mma.sync` (`cuda_mma.py`; BMMA / IMMA in SASS); below
  those architectures the same tiles run on CUDA cores, lane t of a warp accumulating row t / 4,
  columns 2·(t % 4) + {0, 1} of each of its warp's tiles in registers, with `__popc` (bits) or
  byte products;
- with tensor cores, the accumulators go once to a shared-memory tile, from which the same thread
  block computes its part of the output: the epilogue (the per-pixel and per-channel popcount
  corrections, which come in as inputs, the layer's scale, whatever FuseOps put after the
  kernel) is inlined there (`_epilogue_at`). Where it cannot be (several bit planes per pixel
  or channel, an output that is not the GEMM's rows × columns) and on CUDA cores, the
  accumulators are stored to a global int32 GEMM result and the epilogue is a pass of its own.

The other blocks of such a PrimFunc (the activation packing FuseOps put before the kernel, an
epilogue that could not be fused) are inlined where they can be, else spread over blocks of
THREADS threads (`schedule_elementwise`). A PrimFunc without a GEMM is left to the next rules
(TVM's dlight GPU rules and `Fallback`). `design_spaces` is what `tvmbits tune` searches.
"""

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.target import Target

from tvmbits.schedules import cuda_mma

GEMMS = ("bitserial_gemm", "subbyte_gemm")
WARPS_M, WARPS_N = 2, 2  # warps of a thread block along rows and columns
MI, NI = 4, 4  # 8 × 8 MMA tiles of one warp along rows and columns
STEPS = 4  # MMA depths per shared-memory stage (512 bits / 64 bytes of each row)
THREADS = 256  # threads per block of the elementwise passes
SHARED_BYTES = 48 * 1024  # shared memory a block may use without opting in, on every GPU
MIN_ARCH = {cuda_mma.MMA_B1: 80, cuda_mma.MMA_U8S8: 75, cuda_mma.MMA_U8U8: 75}


@dataclass(frozen=True)
class Tile:
    """A thread block's GEMM tile: warps × MMA tiles per warp along rows and columns, and MMA
    depths per shared-memory stage (each shrunk for a small GEMM by `_tile`)."""

    warps_m: int = WARPS_M
    warps_n: int = WARPS_N
    mi: int = MI
    ni: int = NI
    steps: int = STEPS

    def shared_bytes(self) -> int:
        """Shared memory of a block at most: the A and B stages (16 bytes a step per row, plus
        the bank-conflict padding) and the accumulator tile of the fused epilogue."""
        rows, cols = self.warps_m * self.mi * 8, self.warps_n * self.ni * 8
        return (rows + cols) * (16 * self.steps + 16) + rows * cols * 4


DEFAULT_TILE = Tile()
# What `tvmbits tune --target cuda` measures (`design_spaces`): block tiles of 16 × 16 to
# 128 × 64 and 2 to 8 MMA depths per stage, around the default (those within SHARED_BYTES)
TUNED_TILES = [
    Tile(warps_m, warps_n, mi, ni, steps)
    for warps_m, warps_n in ((1, 1), (2, 2), (4, 2), (2, 4))
    for mi, ni in ((2, 2), (4, 4), (4, 2))
    for steps in (2, 4, 8)
]


def cuda_arch(target: Target) -> int:
    """The compute capability of a CUDA target as an int (sm_89 → 89); 0 when it names none."""
    arch = str(target.attrs.get("arch", ""))
    return int(arch[3:]) if arch.startswith("sm_") and arch[3:].isdigit() else 0


def mma_intrinsic(sch: s_tir.Schedule, gemm, target: Target) -> str | None:
    """The tensor intrinsic of the GEMM block on `target`'s architecture, or None (CUDA cores)."""
    a_dtype, b_dtype = (str(read.source.dtype) for read in sch.get(gemm).reads[0:2])
    name = {("uint32", "uint32"): cuda_mma.MMA_B1, ("uint8", "int8"): cuda_mma.MMA_U8S8,
            ("uint8", "uint8"): cuda_mma.MMA_U8U8}.get((a_dtype, b_dtype))
    if name is None or cuda_arch(target) < MIN_ARCH[name]:
        return None
    return name


class LowBitCUDA(GPUScheduleRule):
    """The GEMM-form low-bit kernels on CUDA targets (module docstring)."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        return schedule_cuda(func, target)


def gemm_name(func: tirx.PrimFunc) -> str | None:
    """The name of `func`'s one GEMM block (`GEMMS`), or None."""
    sch = s_tir.Schedule(func)
    names = [sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))]
    gemms = [name for name in names if name in GEMMS]
    return gemms[0] if len(gemms) == 1 else None


def is_tunable(func: tirx.PrimFunc) -> bool:
    """Whether `func` holds one GEMM block, whose tile `design_spaces` varies."""
    return gemm_name(func) is not None


def schedule_cuda(func: tirx.PrimFunc, target: Target, tile: Tile = DEFAULT_TILE,
                  narrow: bool = True) -> s_tir.Schedule | None:
    """`func` scheduled as the module docstring says with `tile`, or None without a GEMM block.
    With `narrow`, the function's indices are made 32-bit first (Relax gives int64 shapes;
    32-bit index arithmetic is cheaper on a GPU and fits every layer); tuning keeps the function
    as it is, so that its records match the function the compiler looks them up with."""
    name = gemm_name(func)
    if name is None:
        return None
    if narrow:
        func = tvm.tirx.transform.ForceNarrowIndexToInt32()(tvm.IRModule({"main": func}))["main"]
    sch = s_tir.Schedule(func)
    intrin = mma_intrinsic(sch, sch.get_sblock(name), target)
    try:
        schedule_gemm(sch, sch.get_sblock(name), intrin, fuse_epilogue=intrin is not None, tile=tile)
    except (s_tir.ScheduleError, EpilogueNotFusable):  # the GEMM result goes through global memory
        sch = s_tir.Schedule(func)
        schedule_gemm(sch, sch.get_sblock(name), intrin, fuse_epilogue=False, tile=tile)
    schedule_elementwise(sch)
    return sch


def design_spaces(func: tirx.PrimFunc, target: Target) -> list[s_tir.Schedule]:
    """`func` scheduled with each of TUNED_TILES that gives a distinct schedule: the design space
    `tvmbits tune` searches on CUDA targets (each schedule one point, its tile fixed, since
    the padding of the GEMM depends on it)."""
    spaces, seen = [], set()
    for tile in TUNED_TILES:
        if tile.shared_bytes() > SHARED_BYTES:
            continue
        sch = schedule_cuda(func, target, tile, narrow=False)
        key = tvm_ffi.structural_hash(sch.mod)
        if key not in seen:
            seen.add(key)
            spaces.append(sch)
    return spaces


class EpilogueNotFusable(Exception):
    """The GEMM's consumers are not one chain ending in an output of the GEMM's rows × columns."""


def _tile(extent: int, warps: int, tiles: int) -> tuple[int, int]:
    """(warps, tiles per warp) along one GEMM axis of `extent`: at most `warps` × `tiles` tiles
    of 8, fewer for a small extent, so that padding wastes at most half a block."""
    eights = -(-extent // 8)
    while warps * tiles > 1 and warps * tiles > eights:
        if tiles > 1:
            tiles //= 2
        else:
            warps //= 2
    return warps, tiles


def schedule_gemm(sch: s_tir.Schedule, gemm, intrin: str | None, fuse_epilogue: bool = False,
                  tile: Tile = DEFAULT_TILE) -> None:
    """Tile, stage and (with `intrin`) tensorize the GEMM block `gemm` (module docstring); with
    `fuse_epilogue`, the accumulators go to a shared-memory tile from which the thread block
    computes its part of the output (`_epilogue_at`) instead of to a global GEMM result."""
    rows, cols, depth = (int(iv.dom.extent) for iv in sch.get(gemm).iter_vars)
    a_dtype = str(sch.get(gemm).reads[0].source.dtype)
    k = cuda_mma.REDUCTION[cuda_mma.MMA_B1 if a_dtype == "uint32" else cuda_mma.MMA_U8S8]
    warps_m, mi = _tile(rows, tile.warps_m, tile.mi)
    warps_n, ni = _tile(cols, tile.warps_n, tile.ni)
    steps = max(1, min(tile.steps, -(-depth // k)))
    sch.pad_einsum(gemm, [warps_m * mi * 8, warps_n * ni * 8, steps * k])
    for block in sch.get_producers(gemm):
        _inline_producers(sch, block)
    r, c, d = sch.get_loops(gemm)
    r0, r1, r2, r3 = sch.split(r, [None, warps_m, mi, 8])
    c0, c1, c2, c3 = sch.split(c, [None, warps_n, ni, 8])
    d0, d1, d2 = sch.split(d, [None, steps, k])
    sch.reorder(r0, c0, r1, c1, d0, d1, r2, c2, r3, c3, d2)
    block_loop = sch.fuse(r0, c0)
    sch.bind(block_loop, "blockIdx.x")
    warp = sch.fuse(r1, c1)
    sch.bind(warp, "threadIdx.y")
    if intrin is None:  # CUDA cores: lane t owns row t // 4, columns 2·(t % 4) + {0, 1} of each tile
        lanes, pair = sch.split(c3, [4, 2])
        sch.reorder(r3, lanes, d0, d1, r2, c2, pair, d2)
        lane = sch.fuse(r3, lanes)
        sch.bind(lane, "threadIdx.x")
    warps = warps_m * warps_n
    for index in (0, 1):
        copy = sch.cache_read(gemm, index, "shared")
        sch.compute_at(copy, d0)
        # rows an odd multiple of 16 bytes apart: the 8 rows × 4 lanes of one MMA operand load
        # then hit 32 different banks
        per_word = 1 if a_dtype == "uint32" else 4
        sch.storage_align(copy, 0, axis=-2, factor=8 * per_word, offset=4 * per_word)
        _inline_producers(sch, copy)
        fused = sch.fuse(*sch.get_loops(copy)[-2:])
        _, ty, tx = sch.split(fused, [None, warps, cuda_mma.WARP])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
    if intrin is None:
        accumulators = sch.cache_write(gemm, 0, "local")
        sch.reverse_compute_at(accumulators, lane)
        sch.decompose_reduction(gemm, d0)
        for loop in (r2, c2, pair):
            sch.unroll(loop)
        return
    staged = sch.cache_write(gemm, 0, "shared") if fuse_epilogue else None
    accumulators = sch.cache_write(gemm, 0, "warp")
    sch.reverse_compute_at(accumulators, warp)
    sch.transform_layout(
        accumulators, ("read", 0),
        lambda i, j: (i // 8, j // 8, *cuda_mma.accumulator_layout(i % 8, j % 8)),
    )
    i, j = sch.get_loops(accumulators)[-2:]
    i0, i1 = sch.split(i, [None, 8])
    j0, j1 = sch.split(j, [None, 8])
    sch.reorder(i0, j0, i1, j1)
    cuda_mma.register()
    sch.tensorize(i1, cuda_mma.STORE_SHARED if fuse_epilogue else cuda_mma.STORE_GLOBAL)
    init = sch.decompose_reduction(gemm, d0)
    init_rows, init_cols = sch.get_loops(init)[-4:-2]
    sch.tensorize(sch.get_loops(init)[-2], cuda_mma.FILL)
    sch.tensorize(r3, intrin)
    # unrolled, so that every accumulator has a constant index: registers, not local memory
    for loop in (i0, j0, init_rows, init_cols, d1, r2, c2):
        sch.unroll(loop)
    if fuse_epilogue:
        _epilogue_at(sch, staged, block_loop, rows, cols, warps)


def _epilogue_at(sch: s_tir.Schedule, staged, block_loop, rows: int, cols: int, warps: int) -> None:
    """Inline the chain of elementwise blocks from the shared tile `staged` copies out to the
    function's output (the layer's epilogue and what FuseOps put after it) into its last block,
    read that block as `[rows, cols]` (NHWC pixels flattened) and compute it inside each thread
    block, `block_loop`, from the tile. Raises EpilogueNotFusable where the output is not the
    GEMM's rows × columns one to one (several bit planes, a reshape after the kernel)."""
    block = staged
    while True:
        consumers = sch.get_consumers(block)
        if not consumers:
            break
        if len(consumers) != 1:
            raise EpilogueNotFusable(f"{len(consumers)} consumers of {sch.get(block).name_hint}")
        sch.compute_inline(block)
        block = consumers[0]
    shape = [int(iv.dom.extent) for iv in sch.get(block).iter_vars]
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block).iter_vars):
        raise EpilogueNotFusable("the output block reduces")
    if len(shape) == 4 and shape[0] * shape[1] * shape[2] == rows and shape[3] == cols:
        _, height, width, _ = shape
        pixels = tirx.IndexMap.from_func(lambda n, y, x, o: ((n * height + y) * width + x, o), index_dtype="int32")
        sch.transform_block_layout(block, pixels)
    elif shape != [rows, cols]:
        raise EpilogueNotFusable(f"output {shape} is not the GEMM's {rows} × {cols}")
    sch.reverse_compute_at(block, block_loop)
    loops = sch.get_loops(block)
    inner = [loop for loop in loops if sch.get(loop).thread_binding is None]  # a unit axis may be gone
    fused = sch.fuse(*inner) if len(inner) > 1 else inner[0]
    _, ty, tx = sch.split(fused, [None, warps, cuda_mma.WARP])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")


def _inline_producers(sch: s_tir.Schedule, block) -> None:
    """Inline every injective producer chain of `block` into it (padding, im2col, reorders)."""
    for producer in sch.get_producers(block):
        try:
            sch.compute_inline(producer)
        except s_tir.ScheduleError:
            continue
        _inline_producers(sch, block)
        return


def schedule_elementwise(sch: s_tir.Schedule) -> None:
    """Every root block whose loops are not bound to threads yet (all but the GEMM's): those
    that can be are inlined into their consumers; each one left has its leading spatial loops
    fused and spread over blocks of THREADS threads (its reductions run in each thread)."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if _bound(sch, block):
            continue
        try:
            sch.compute_inline(block)
        except s_tir.ScheduleError:
            pass
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if _bound(sch, block):
            continue
        loops = sch.get_loops(block)
        iter_vars = sch.get(block).iter_vars
        spatial = next((i for i, iv in enumerate(iter_vars) if iv.iter_type != tirx.IterVar.DataPar), len(iter_vars))
        if not spatial or len(loops) != len(iter_vars):  # one thread then (a scalar, a reduction to one value)
            sch.bind(sch.add_unit_loop(loops[0] if loops else block), "threadIdx.x")
            continue
        bx, tx = sch.split(sch.fuse(*loops[:spatial]), [None, THREADS])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")


def _bound(sch: s_tir.Schedule, block) -> bool:
    return any(sch.get(loop).thread_binding is not None for loop in sch.get_loops(block))
