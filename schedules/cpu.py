"""Default CPU schedules, as dlight rules (a sound start, not tuned).

`LowBitCPU` schedules a PrimFunc holding exactly one kernel block (`bitserial_conv2d`,
`bitserial_dense`, `subbyte_conv2d`, `subbyte_dense`, and TOPI's float `conv2d_nhwc` and
`matmul`, so that the float first layer, shortcuts and classifier of a low-bit network are not
left naive), also after FuseOps + FuseTIR put producers before it and elementwise epilogues
after it. Output channels are split into vectors of `LANES`:

- conv2d: the weights are copied once per call into `[ceil(O/LANES), KH, KW, ..., LANES]`
  (zero-padded) so that a vector's weights lie side by side (the sub-byte weights come blocked
  so). A register tile holds ROWS × PIXELS × GROUPS accumulator vectors: GROUPS (≤ 4)
  output-channel vectors of a ROWS × PIXELS block of output pixels (divisors of the output
  height and width, ≤ MAX_PIXELS pixels), at most the target's `accumulator_vectors` (half
  its vector register file: 16 with AVX-512, 4 with AVX2 or AArch64 NEON, 2 with Armv7 NEON;
  `_register_tile` picks the largest, so a 7×7 output gets 1 × 7 pixels × 2 vectors; on a tie,
  more vectors, but on Arm a float conv's tile favours pixels: `fmla` has no broadcast operand,
  so each weight vector and each broadcast activation is a load of its own).
  Channel blocks, batch, row and column blocks are fused into one parallel loop (in that
  order, so that one core works through one block of weights); inside it
  the reduction loops run (a bit-serial conv's packed words 2 at a time on AVX-512's 16-vector
  tiles, a kernel row's taps inside each pair: `WORD_CHUNK`), and within each reduction step
  the tile is unrolled with the lanes
  vectorised, so each activation word is broadcast once per GROUPS vectors and each weight
  vector is loaded once per ROWS × PIXELS pixels;
- sub-byte kernels: the input channels are split by DOT (4) inside the lanes, and each lane × DOT
  step is tensorized into one `vpdpbusd` on a CPU with AVX512-VNNI (`vnni.py`), four `sdot` on
  an AArch64 CPU with the dot product, two `smull`, an `addp` and an `sadalp` per 4 channels on
  other AArch64 CPUs (a byte `mul`, an `saddlp` and an `sadalp` where products fit a byte;
  `arm_dot.py`, activations below 128); the Arm tiles favour pixels over channel vectors, so one
  weight block (4 registers) feeds several pixels, and run each DOT step over the tile's pixels
  (the step's weights loaded once, short-lived), sized by `arm_dot.DOT_TILES` (on outputs where
  no multi-pixel tile of 16-channel vectors fits, such as 7×7, one of 8-channel vectors);
  elsewhere the DOT products are unrolled and the lanes vectorised;
- dense: the weights are copied the same way (a float matmul's `[K, O]` weight into
  `[O/LANES, K, LANES]` when LANES divides O, else read as it is); the batch and blocks of up to GROUPS channel vectors are fused
  into one parallel loop, the reduction runs inside it, the block's vectors are accumulated
  together (independent chains) and the lanes are vectorised;
- every such weight copy is marked for `pipeline.PrepackWeights`, which makes it once at compile
  time on the weight constant, unless O needs padding to a multiple of LANES (then it is made
  on every call);
- the accumulators live in a "local" buffer (a stack array, `passes/tiles_on_stack.py`, so
  that LLVM keeps it in registers), initialised before the reduction loops; the
  innermost reduction loop (packed words, or channels) is unrolled, in chunks of `UNROLL`
  (`arm_dot.DOT_UNROLL` for the Arm dot products; `tvmbits tune` samples the chunk: a divisor
  of the loop up to 2·UNROLL);
- the epilogues are inlined into the accumulators' write-back, which runs a channel vector at a
  time, so the accumulation never goes to memory; an epilogue that cannot be inlined stays a
  parallel loop nest of its own;
- the packing of the kernel's result for the next low-bit layer, where `FusePacking` put it into
  the function: each parallel tile of the kernel also packs the pixels it wrote, while they are
  in cache (the packing's loops tiled the same way and merged into the tiles' loop, the binarize
  or quantize inlined into it), when a tile's channels are whole words of a result whose
  channels fill its words (bitpack: 32 channels; subbyte_pack: 4); otherwise the packing runs
  after the kernel as the packing-only functions below do. `tvmbits tune` then keeps the
  default number of channel vectors in a tile (the packing's tiling follows the sampled rows
  and columns);
- producers (padding, packing, unpacking sub-byte weights) stay whole, each a parallel loop
  nest with a plain innermost loop for LLVM to vectorise (a reduction whose innermost output
  axis is channels is vectorised along them): inlining them into the kernel would redo them
  once per output channel.

A `bitpack` that writes the zero-padded input of a padded bit-serial conv comes split into a
fill of its output with zero words (`ZERO_FILL`, run as one flat loop, before the kernel's tiles
where the packing is fused) and the packing of the pixels into it, tiled or parallelised as an
unpadded packing is.

A PrimFunc whose blocks include `bitpack` or `subbyte_pack` and no kernel gets its elementwise
producers (binarize, quantize, a layout transpose) inlined into the packing and its loops
parallelised; `bitpack`'s 16 partial words (`bitpack_lanes`) are one vector step over channels
inside the loop over words when the codes are contiguous in channels (NHWC), and the word is
one expression vectorised along the pixels of a row when the input is NCHW.
`ParallelCPU` takes every other PrimFunc: layout transposes are copied in L1-sized tiles,
reductions along pixels (NHWC pooling, means) are vectorised over channels, the rest just runs
its outer loops in parallel.
`benchmarks/layers.py` measures what these schedules reach against ONNX Runtime.
"""

from typing import Callable, NamedTuple

import numpy as np
from tvm import s_tir, tirx
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
from tvm.target import Target
from tvm.target.codegen import target_has_features

from tvmbits.ops.bitpack import WORD_BITS, ZERO_FILL
from tvmbits.ops.subbyte import BLOCK, DATA_MAX, DOT, WEIGHT_MAX
from tvmbits.schedules import arm_dot, vnni
from tvmbits.schedules.arm_dot import ARM_INTRINSICS, arm_intrinsic, dot_tiles
from tvmbits.schedules.vnni import DOT_16x4, has_vnni

KERNELS = ("bitserial_conv2d", "bitserial_dense", "subbyte_conv2d", "subbyte_dense", "conv2d_nhwc", "matmul")
PACKS = ("bitpack_lanes", "bitpack", "subbyte_pack")
# the block annotation TVM's SplitLayoutRewritePreproc moves into a function of its own
PREPACK = "meta_schedule.layout_rewrite_preproc"
LANES = BLOCK  # int32 accumulators per vector; the sub-byte weights come blocked by it
GROUPS = 4  # vectors of output channels accumulated together for one pixel
MAX_PIXELS = 8  # LLVM can take minutes to allocate registers for much larger unrolled tiles
TUNED_COLUMNS = 4  # the most columns of a tile `tvmbits tune` samples
UNROLL = 8
# Packed words of a tap a bit-serial conv's tile runs together (`_chunk_words`) where the tile has
# more than WORD_CHUNK_TILE accumulator vectors (AVX-512's 16): with all of a tap's words
# unrolled (4 and more: 128 channels and up), LLVM's loop over a row's taps held 64 and more
# popcounts, spilled accumulators and ran ResNet-18's 28×28, 128→128 and 14×14, 256→512 W1A1
# kernels 20–35% slower on an AVX-512 Xeon (the other layers no slower; chunks of 4: as slow).
# The 4-vector NEON tiles stay whole: chunked, the layers executed 3–11% more instructions on
# the Cortex-A72 and A76 models.
WORD_CHUNK = 2
WORD_CHUNK_TILE = 8
MAX_TUNED_STEP = 2 * UNROLL  # the most reduction steps a tuned schedule unrolls together
TRANSPOSE_TILE = 16
# iterations below which a loop nest is not worth waking the thread pool: waking and joining it took
# about 3 µs on a 2-core x86 machine, where one core copies a 58×58×2-word padded input in 1.6 µs
# (4.2 µs in parallel)
MIN_PARALLEL = 16384
# the conv tiles' parallel loop fuses, in this order, the tile index along the output's axes
# (N, H, W, C): channel blocks outermost, so that one core works through one block of weights
CONV_TILE_ORDER = [3, 0, 1, 2]


class LowBitCPU(CPUScheduleRule):
    """The default schedule of the low-bit kernels and packing ops on LLVM (CPU) targets."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        return sch if schedule_lowbit(sch, target, tunable) else None


def is_tunable(func: tirx.PrimFunc) -> bool:
    """Whether `func` holds exactly one kernel block, whose tile `schedule_lowbit` can sample."""
    return sum(block.name_hint in KERNELS for block in _root_blocks(func)) == 1


def accumulator_vectors(target: Target) -> int:
    """LANES-wide int32 accumulator vectors a register tile may hold on `target`: half of its
    vector register file (the other half holds weights and broadcast activations)."""
    triple = str(target.attrs.get("mtriple", ""))
    if triple.startswith("aarch64"):
        registers, bits = 32, 128
    elif triple.startswith("arm"):
        registers, bits = 16, 128
    elif target_has_features("avx512f", target):
        registers, bits = 32, 512
    elif target_has_features("avx2", target):
        registers, bits = 16, 256
    else:
        registers, bits = 16, 128
    return max(1, registers * bits // 32 // 2 // LANES)


def _is_arm(target: Target) -> bool:
    return str(target.attrs.get("mtriple", "")).startswith(("aarch64", "arm"))


def schedule_lowbit(sch: s_tir.Schedule, target: Target, tunable: bool = False) -> bool:
    """Schedule `sch` in place as the module docstring says; False (untouched) when it holds
    neither one kernel nor a packing op. With `tunable`, the conv register tile (channel vectors,
    columns, rows) and the reduction steps unrolled together are sampled: the design space
    MetaSchedule searches."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(block).name_hint for block in blocks]
    kernels = [i for i, name in enumerate(names) if name in KERNELS]
    if len(kernels) == 1:
        _schedule_kernel(sch, blocks, kernels[0], target, tunable)
        return True
    packs = [i for i, name in enumerate(names) if name in PACKS]
    if not kernels and packs:
        _schedule_packing(sch, blocks, packs[0])
        return True
    return False


def _root_blocks(func: tirx.PrimFunc) -> list:
    sch = s_tir.Schedule(func)
    return [sch.get(block) for block in sch.get_child_blocks(sch.get_sblock("root"))]


class ParallelCPU(CPUScheduleRule):
    """Every other PrimFunc on LLVM targets (layout transposes, pooling, float layers): the
    leading data-parallel loops of each of its loop nests run in parallel, the innermost stays a
    plain loop for LLVM to vectorise; nests of fewer than MIN_PARALLEL iterations stay serial."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            if _lane_reduction(sch, block):  # read its padding (or other elementwise input) in place
                for producer in sch.get_producers(block):
                    try:
                        sch.compute_inline(producer)
                    except s_tir.ScheduleError:
                        pass
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            if not _tile_transpose(sch, block) and not _reduce_in_lanes(sch, block):
                _parallelize(sch, block, keep_inner=True)
        return sch


def _lane_reduction(sch: s_tir.Schedule, block) -> bool:
    """Whether `block` is a reduction whose innermost output axis is data-parallel, a multiple of
    LANES (NHWC pooling, means over pixels), with its loops as its iterators."""
    stmt = sch.get(block)
    spatial = _spatial_loop_count(sch, block)
    loops = sch.get_loops(block)
    if not 0 < spatial < len(loops) or len(loops) != len(stmt.iter_vars) or len(stmt.writes) != 1:
        return False
    channel = stmt.iter_vars[spatial - 1]
    extent = channel.dom.extent
    if not stmt.writes[0].region[-1].min.same_as(channel.var) or not isinstance(extent, tirx.IntImm):
        return False
    return extent.value % LANES == 0


def _reduce_in_lanes(sch: s_tir.Schedule, block) -> bool:
    """Run a `_lane_reduction` block with its reduction loops outside its innermost output axis,
    LANES of it at a time in a vector, and its leading loops in parallel. False (untouched) if
    not such a block."""
    if not _lane_reduction(sch, block):
        return False
    loops = sch.get_loops(block)
    spatial = _spatial_loop_count(sch, block)
    _parallelize(sch, block, keep_inner=True)
    *_, channel_loop = sch.get_loops(block)[: -(len(loops) - spatial)]
    reduction = sch.get_loops(block)[-(len(loops) - spatial):]
    vectors, lane = sch.split(channel_loop, factors=[None, LANES])
    sch.reorder(vectors, *reduction, lane)
    sch.vectorize(lane)  # before decompose_reduction, as in the kernels
    sch.decompose_reduction(block, reduction[0])
    return True


def _tile_transpose(sch: s_tir.Schedule, block) -> bool:
    """Copy a block that reads one buffer along another innermost axis than it writes (a layout
    transpose, e.g. NHWC → NCHW at a graph's edge) in TRANSPOSE_TILE² tiles, so that both sides
    of a tile stay in L1; the loops outside the tiles run in parallel. False if not such a block."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    if len(stmt.reads) != 1 or len(loops) != len(stmt.iter_vars) or len(loops) < 2:
        return False
    if any(v.iter_type != tirx.IterVar.DataPar or not isinstance(v.dom.extent, tirx.IntImm) for v in stmt.iter_vars):
        return False
    innermost_read = stmt.reads[0].region[-1].min
    axis = next((i for i, v in enumerate(stmt.iter_vars) if innermost_read.same_as(v.var)), None)
    if axis is None or axis == len(loops) - 1:
        return False
    if np.prod([int(v.dom.extent) for v in stmt.iter_vars]) < MIN_PARALLEL:
        return False
    read_outer, read_inner = sch.split(loops[axis], factors=[None, TRANSPOSE_TILE])
    write_outer, write_inner = sch.split(loops[-1], factors=[None, TRANSPOSE_TILE])
    others = [loop for i, loop in enumerate(loops) if i not in (axis, len(loops) - 1)]
    sch.reorder(*others, read_outer, write_outer, read_inner, write_inner)
    sch.parallel(sch.fuse(*others, read_outer, write_outer))
    return True


def _schedule_kernel(sch: s_tir.Schedule, blocks: list, index: int, target: Target, tunable: bool) -> None:
    kernel = blocks[index]
    name = sch.get(kernel).name_hint
    spatial = _spatial_loop_count(sch, kernel)
    out_channel = sch.get(kernel).iter_vars[spatial - 1]
    lanes = min(LANES, int(out_channel.dom.extent))
    reads = sch.get(kernel).reads
    weight = next((i for i, read in enumerate(reads) if read.region[0].min.same_as(out_channel.var)), None)
    whole = int(out_channel.dom.extent) % lanes == 0
    if weight is not None:  # [O, ...]: regroup by LANES channels (sub-byte weights come blocked)
        index_map = lambda o, *rest: (o // lanes, *rest, o % lanes)  # noqa: E731
    elif "matmul" in name and whole:  # a float matmul's [K, O] weight: columns strided by O
        weight = next((i for i, read in enumerate(reads)
                       if len(read.region) == 2 and read.region[1].min.same_as(out_channel.var)), None)
        index_map = lambda k, o: (o // lanes, k, o % lanes)  # noqa: E731
    if weight is not None:
        copy = sch.cache_read(kernel, weight, "global")
        zero = tirx.const(0, sch.get(copy).writes[0].source.dtype)
        sch.transform_layout(kernel, ("read", weight), index_map, pad_value=zero)
        _parallelize(sch, copy)
        if whole:  # (a padded copy is not a plain copy, which TVM's layout-rewrite passes require)
            # of a constant weight, the copy is made once at compile time (`pipeline.PrepackWeights`)
            sch.annotate(copy, PREPACK, 1)
    for producer in blocks[:index]:
        if not _reduce_in_lanes(sch, producer):
            _parallelize(sch, producer, keep_inner=True)
    write_back = sch.cache_write(kernel, 0, "local")
    tail = blocks[index + 1 :]
    packing = [block for block in tail if sch.get(block).name_hint in PACKS]
    stranded = []
    for epilogue in tail:
        if sch.get(epilogue).name_hint == ZERO_FILL:  # of a padded packing: it stays before the tiles
            _flatten(sch, epilogue)
            continue
        if sch.get(epilogue).name_hint in PACKS:
            continue
        try:
            sch.reverse_compute_inline(epilogue)
        except s_tir.ScheduleError:
            stranded.append(epilogue)
    codes, stranded = _codes_of_packing(sch, stranded, packing)
    dot = name.startswith("subbyte")
    tensorize = dot and int(out_channel.dom.extent) % BLOCK == 0 and _dot_intrinsic(sch, kernel, target)
    for epilogue in stranded:
        _parallelize(sch, epilogue)
    if "conv2d" in name:
        # a float conv on Arm: fmla has no broadcast operand, so each weight vector and each
        # pixel's broadcast activation is a load of its own; one weight vector feeding several
        # pixels takes the fewest (ResNet-18's stem on the Cortex-A76 model: 18 M fewer instructions)
        pixels_first = name == "conv2d_nhwc" and _is_arm(target)
        tile = _tile_conv(sch, kernel, write_back, lanes, accumulator_vectors(target), tunable, dot, tensorize,
                          bool(packing), pixels_first)
        _run_tiles(sch, tile, codes, packing, alone=not stranded)
        return
    loops = sch.get_loops(kernel)
    *outer, channel = loops[:spatial]
    reduction = loops[spatial:]
    # a few channel vectors accumulated together: independent chains for the vector units
    vectors = -(-int(sch.get(channel).extent) // lanes)
    tile = max(g for g in range(1, GROUPS + 1) if vectors % g == 0)
    group, vector, lane = sch.split(channel, factors=[None, tile, lanes])
    inner = _split_dot(sch, reduction) if dot else []
    sch.reorder(group, *reduction, vector, *_lane_order(lane, inner, tensorize))
    parallel = sch.fuse(*outer, group)
    _write_back_at(sch, write_back, parallel, lanes)

    def finish():
        _finish(sch, kernel, reduction, lane, inner, tensorize, tunable)
        sch.unroll(vector)

    tiles = Tiles(parallel, list(range(spatial)), [1] * (spatial - 1) + [tile * lanes],
                  _output_shape(sch, kernel), finish)
    _run_tiles(sch, tiles, codes, packing, alone=not stranded)


def _write_back_at(sch: s_tir.Schedule, write_back, tile_loop, lanes: int) -> None:
    """Write each tile back (the epilogues inlined into the write-back) inside `tile_loop`, `lanes`
    channels at a time in a vector when the output's channels are whole vectors; LLVM left to
    itself made gathers and scatters of it (over a third of a 14²×256→512 W1A1 layer's kernel
    time). Unit loops are kept, so that the loop nest, and a tuning trace's replay of it, does
    not depend on the sampled tile."""
    sch.reverse_compute_at(write_back, tile_loop, preserve_unit_loops=True)
    if _output_shape(sch, write_back)[-1] % lanes == 0:
        channel = sch.get_loops(write_back)[-1]
        sch.vectorize(sch.split(channel, factors=[None, lanes])[1])


def _output_shape(sch: s_tir.Schedule, kernel) -> list[int]:
    return [int(d) for d in sch.get(kernel).writes[0].source.shape]


def _codes_of_packing(sch: s_tir.Schedule, stranded: list, packing: list) -> tuple[list, list]:
    """Split the stranded epilogues into those that only make the packing's codes (binarize or
    quantize of a result the function also returns) and the others, each in order."""
    codes, others = [], []
    for block in stranded:
        consumers = {sch.get(c).name_hint for c in sch.get_consumers(block)}
        (codes if packing and consumers and consumers <= set(PACKS) else others).append(block)
    return codes, others


class Tiles(NamedTuple):
    """The kernel's tiles of output: `loop` runs over them (not yet parallel), fusing the tile
    index along each output axis in `order` (axes numbered as the output's, channels last);
    `sizes`, per output axis, the extent of a tile along it; `finish` completes the kernel's
    schedule inside a tile (decomposing its reduction, vectorising, unrolling), once the loop
    is parallel (TVM checks, when a loop is made parallel, that the reductions under it are
    whole)."""

    loop: s_tir.schedule.LoopRV
    order: list[int]
    sizes: list
    extents: list[int]  # the kernel's output shape
    finish: Callable[[], None]


def _packs_kernel_output(sch: s_tir.Schedule, packing: list, extents: list[int], channels: int) -> bool:
    """Whether the packing reads a tensor shaped as the kernel's output (not, e.g., flattened
    for a dense layer) whose channels tiles of `channels` channels divide."""
    codes = [int(d) for d in sch.get(packing[0]).reads[0].source.shape]
    return codes == list(extents) and codes[-1] % channels == 0


def _run_tiles(sch: s_tir.Schedule, tiles: Tiles, codes: list, packing: list, alone: bool) -> None:
    """Run the kernel's tiles in parallel. With `packing` (`FusePacking` put the packing of the
    kernel's result into the function; `codes`: the stranded binarize or quantize blocks it
    reads), each tile also packs what it wrote, while that is in cache, when its channels hold
    whole words of a result whose channels fill its words (bitpack: WORD_BITS channels a word;
    subbyte_pack: DOT) and the tiles write all it reads (`alone`: no epilogue left as loop nests
    of its own, which TVM's loop merge would move before the kernel): the packing's loops are
    tiled the same way and merged into the tiles' loop. Otherwise the packing runs as loop nests
    of its own after the kernel (`_schedule_packing`)."""
    names = [sch.get(block).name_hint for block in packing]
    unit = DOT if "subbyte_pack" in names else WORD_BITS
    channels = tiles.sizes[-1]
    if (not packing or not alone or channels % unit
            or not _packs_kernel_output(sch, packing, tiles.extents, channels)):
        sch.parallel(tiles.loop)
        tiles.finish()
        if packing:
            _schedule_packing(sch, codes + packing, len(codes))
        return
    for block in codes:
        sch.compute_inline(block)
    if "subbyte_pack" in names:
        pack = packing[0]
        *spatial, channel = sch.get_loops(pack)
        planes, words = [], channel
    else:  # bitpack: each word's partial words computed at it, one vector step
        lanes, pack = packing[names.index("bitpack_lanes")], packing[names.index("bitpack")]
        sch.compute_at(lanes, sch.get_loops(pack)[-1])
        sch.vectorize(sch.get_loops(lanes)[-1])
        *spatial, plane, words = sch.get_loops(pack)
        planes, channels = [plane], channels // unit
    outer, inner = zip(*(sch.split(loop, factors=[None, size])
                         for loop, size in zip([*spatial, words], [*tiles.sizes[:-1], channels])))
    sch.reorder(*(outer[axis] for axis in tiles.order), *inner[:-1], *planes, inner[-1])
    sch.parallel(sch.merge(tiles.loop, sch.fuse(*(outer[axis] for axis in tiles.order))))
    tiles.finish()
    if not planes:
        sch.vectorize(sch.split(inner[-1], factors=[None, LANES])[1])


def _split_dot(sch: s_tir.Schedule, reduction: list) -> list:
    """Split the DOT input channels of one dot product off the innermost reduction loop, in
    place in `reduction`; returns [that DOT loop]."""
    reduction[-1], dot = sch.split(reduction[-1], factors=[None, DOT])
    return [dot]


def _lane_order(lane, inner: list, tensorize: bool) -> list:
    """The innermost loops: the dot product's DOT inputs inside the lanes for the tensor
    intrinsic (its operand order), outside them for plain vector code."""
    return [lane, *inner] if tensorize else [*inner, lane]


def _finish(sch: s_tir.Schedule, kernel, reduction: list, lane, inner: list, tensorize: bool,
            tunable: bool) -> None:
    """Vectorise the lanes (or tensorize lane × DOT), split off the accumulator initialisation
    and unroll the innermost reduction loop (by a sampled divisor, with `tunable`)."""
    if tensorize:
        init = sch.decompose_reduction(kernel, reduction[0])
        sch.vectorize(sch.get_loops(init)[-1])
        (arm_dot if tensorize in ARM_INTRINSICS else vnni).register()
        sch.tensorize(lane, tensorize)  # replaces lane and inner
    else:
        sch.vectorize(lane)  # before decompose_reduction, which needs the init to move first
        sch.decompose_reduction(kernel, reduction[0])
        for loop in inner:
            sch.unroll(loop)
    chunk = arm_dot.chunk_steps(tensorize)
    if chunk > 1:  # steps unrolled a whole chunk at a time
        reduction[-1], steps = sch.split(reduction[-1], factors=[None, chunk])
        sch.unroll(steps)
    if tunable:
        steps = sch.sample_perfect_tile(reduction[-1], n=2, max_innermost_factor=MAX_TUNED_STEP // chunk)
        sch.unroll(sch.split(reduction[-1], factors=steps)[1])
    else:
        _unroll(sch, reduction[-1], arm_dot.DOT_UNROLL.get(tensorize, UNROLL) // chunk)


def _dot_intrinsic(sch: s_tir.Schedule, kernel, target: Target) -> str | None:
    """The tensor intrinsic of the kernel's DOT_16x4 steps on `target`, or None: VNNI where the
    kernel multiplies uint8 data by int8 weights, the AArch64 ones (`arm_dot.arm_intrinsic`)."""
    stmt = sch.get(kernel)
    dtypes = [str(read.source.dtype) for read in stmt.reads if str(read.source.dtype) != "int32"]
    if len(dtypes) != 2 or "uint8" not in dtypes:
        return None
    weight = dtypes[1] if dtypes[0] == "uint8" else dtypes[0]
    if has_vnni(target):
        return DOT_16x4 if weight == "int8" else None
    data_max, weight_max = (stmt.annotations.get(key) for key in (DATA_MAX, WEIGHT_MAX))
    return arm_intrinsic(target, "uint8", weight, None if data_max is None else int(data_max),
                         None if weight_max is None else int(weight_max))


def _tile_conv(sch: s_tir.Schedule, kernel, write_back, lanes: int, budget: int, tunable: bool, dot: bool,
               tensorize: bool, fixed_groups: bool, pixels_first: bool) -> "Tiles":
    """Register tile of ROWS × PIXELS × GROUPS vectors of `lanes` accumulators, at most `budget`
    vectors (see the module docstring), favouring pixels over groups with `pixels_first` (and
    for the Arm dot products); the tiles, for `_run_tiles` to run in parallel."""
    n, y, x, channel, *reduction = sch.get_loops(kernel)
    arm = tensorize in ARM_INTRINSICS  # each weight vector is 4 registers: reuse it across pixels
    if arm:
        tensorize, lanes, budget = _arm_tile(sch, tensorize, channel, y, x, reduction[-1])
    outer, group, lane, y_outer, row, x_outer, pixel, sizes = _split_tile(
        sch, channel, y, x, lanes, budget, tunable, prefer_groups=not (arm or pixels_first), fixed_groups=fixed_groups
    )
    inner = _split_dot(sch, reduction) if dot else []
    # channel blocks outermost: consecutive iterations (on one core) reuse one block of weights
    sch.reorder(outer, n, y_outer, x_outer, *reduction, row, pixel, group, *_lane_order(lane, inner, tensorize))
    if not tunable and sch.get(kernel).name_hint == "bitserial_conv2d" and \
            sizes[1] * sizes[2] * sizes[3] // lanes > WORD_CHUNK_TILE:  # the tile's accumulator vectors
        _chunk_words(sch, reduction)
    parallel = sch.fuse(outer, n, y_outer, x_outer)
    _write_back_at(sch, write_back, parallel, lanes)

    def finish():
        _finish(sch, kernel, reduction, lane, inner, tensorize, tunable)
        for loop in (row, pixel, group):
            sch.unroll(loop)

    return Tiles(parallel, CONV_TILE_ORDER, sizes, _output_shape(sch, kernel), finish)


def _chunk_words(sch: s_tir.Schedule, reduction: list) -> None:
    """Run a bit-serial conv's packed words `WORD_CHUNK` at a time, the taps of a kernel row
    inside each chunk (in place in `reduction`: ky, words / WORD_CHUNK, kx, WORD_CHUNK, the last
    unrolled by `_finish`), where the chunk divides the words."""
    ky, kx, word = reduction
    extent = int(sch.get(word).extent)
    if extent > WORD_CHUNK and extent % WORD_CHUNK == 0:
        chunks, chunk = sch.split(word, factors=[None, WORD_CHUNK])
        sch.reorder(chunks, kx)
        reduction[:] = [ky, chunks, kx, chunk]


def _arm_tile(sch: s_tir.Schedule, intrinsic: str, channel, y, x, channels) -> "arm_dot.DotTile":
    """The Arm register tile (`arm_dot.DOT_TILES`) of a conv tensorized with `intrinsic`: the
    first of its tiles with several pixels, or else the first; the lane forms where the input
    channels (the loop `channels`) come in whole 16-channel chunks."""
    tiles = dot_tiles(intrinsic, int(sch.get(channels).extent) % (4 * DOT) == 0)
    extents = [int(sch.get(loop).extent) for loop in (y, x)]

    def pixels(tile) -> int:
        _, rows, columns = _register_tile(-(-int(sch.get(channel).extent) // tile.lanes), *extents, tile.budget,
                                          prefer_groups=False)
        return rows * columns

    return next((tile for tile in tiles if pixels(tile) > 1), tiles[0])


def _split_tile(sch: s_tir.Schedule, channel, y, x, lanes: int, budget: int, tunable: bool,
                prefer_groups: bool = True, fixed_groups: bool = False) -> tuple:
    """Split the output channel, row and column loops into the register tile (its sizes
    `_register_tile`'s, or sampled around them with `tunable`, but for the channel vectors with
    `fixed_groups`): (channel blocks, groups, lanes, row blocks, rows, column blocks, columns),
    then the tile's sizes along the output (1, rows, columns, channels), rows and columns as
    split factors (sampled ones too: a schedule that splits other loops by them follows the
    tuner's choices)."""
    vectors, lane = sch.split(channel, factors=[None, lanes])
    extents = [int(sch.get(loop).extent) for loop in (vectors, y, x)]
    groups, rows, pixels = _register_tile(*extents, budget, prefer_groups=prefer_groups)
    if tunable:  # around the default: up to GROUPS vectors, its rows or one, up to 4 columns or its own
        if not fixed_groups:
            groups = sch.sample_perfect_tile(vectors, n=2, max_innermost_factor=min(GROUPS, budget))[1]
        columns = min(MAX_PIXELS // rows, max(TUNED_COLUMNS, pixels), budget)
        pixels = sch.sample_perfect_tile(x, n=2, max_innermost_factor=columns)[1]
        rows = sch.sample_categorical([1, rows], [0.5, 0.5]) if rows > 1 else 1
    outer, group = sch.split(vectors, factors=[None, groups])
    y_outer, row = sch.split(y, factors=[None, rows])
    x_outer, pixel = sch.split(x, factors=[None, pixels])
    sizes = [1, rows, pixels, int(sch.get(group).extent) * lanes]
    return outer, group, lane, y_outer, row, x_outer, pixel, sizes


def _register_tile(vectors: int, height: int, width: int, budget: int, prefer_groups: bool = True
                   ) -> tuple[int, int, int]:
    """(GROUPS, ROWS, PIXELS): divisors of the channel vectors (≤ GROUPS), output rows and
    output columns, ROWS·PIXELS ≤ MAX_PIXELS, with the most accumulators within `budget`; on a
    tie the one with more GROUPS (each activation word broadcast once feeds them all; on AArch64
    four groups of one pixel keep the hot loop at 5.5 instructions per 128 bit-MACs, two × two
    took 14), then the one with fewer rows."""

    def divisors(value: int, limit: int) -> list[int]:
        return [d for d in range(1, min(value, limit) + 1) if value % d == 0]

    tiles = [
        (g, r, p)
        for g in divisors(vectors, GROUPS)
        for r in divisors(height, MAX_PIXELS)
        for p in divisors(width, MAX_PIXELS // r)
        if g * r * p <= budget
    ]
    if not prefer_groups:  # the Arm dot-product tiles: the fewest groups, each weight load feeding most pixels
        return max(tiles, key=lambda t: (t[0] * t[1] * t[2], -t[0], -t[1]))
    return max(tiles, key=lambda t: (t[0] * t[1] * t[2], t[0], -t[1]))


def _schedule_packing(sch: s_tir.Schedule, blocks: list, first_pack: int) -> None:
    lanes = None
    for i, block in enumerate(blocks):
        if i < first_pack:
            try:
                sch.compute_inline(block)
                continue
            except s_tir.ScheduleError:
                pass
        if sch.get(block).name_hint == "bitpack_lanes":
            lanes = block
            continue
        if sch.get(block).name_hint == ZERO_FILL:
            _flatten(sch, block)
            continue
        if lanes is not None and _reads_along_last_axis(sch, lanes):
            # codes contiguous in channels (NHWC): each word's partial words are one vector step
            _parallelize(sch, block)
            sch.compute_at(lanes, sch.get_loops(block)[-1])
            sch.vectorize(sch.get_loops(lanes)[-1])
            continue
        if lanes is not None:  # e.g. an NCHW input: the word as one expression, vectorised along pixels
            sch.compute_inline(lanes)
        lanes = None
        if not _vectorize_along_input(sch, block):
            _parallelize(sch, block)


def _flatten(sch: s_tir.Schedule, block) -> None:
    """Run the block's loops as one (a padded packing's zero fill: a memset for LLVM)."""
    sch.fuse(*sch.get_loops(block))


def _reads_along_last_axis(sch: s_tir.Schedule, block) -> bool:
    """Whether each of the block's reads of a tensor (scalars aside) is indexed, on its last axis,
    by the block's innermost iterator (consecutive iterations read consecutive elements)."""
    inner = sch.get(block).iter_vars[-1].var
    reads = [read for read in sch.get(block).reads if len(read.region)]
    return bool(reads) and all(
        any(var.same_as(inner) for var in tirx.analysis.undefined_vars(read.region[-1].min)) for read in reads
    )


def _vectorize_along_input(sch: s_tir.Schedule, block) -> bool:
    """Pack LANES outputs at a time along the axis the input is contiguous in, when that is an
    outer output axis (an NCHW input packed along its channels: the pixels of a row), so that
    each of the 32 channel reads of a word is one vector load. False (untouched) otherwise."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    if len(stmt.reads) != 1 or len(loops) != len(stmt.iter_vars) or len(loops) < 3:
        return False
    read = stmt.reads[0].region[-1].min
    axis = next((i for i, v in enumerate(stmt.iter_vars) if read.same_as(v.var)), None)
    if axis is None or axis == len(loops) - 1:
        return False
    extent = int(stmt.iter_vars[axis].dom.extent)
    if extent % LANES and extent > 4 * LANES:
        return False
    # a whole row of up to 4 vectors (LLVM finishes an odd width with a masked vector)
    vectors, lane = sch.split(loops[axis], factors=[None, LANES if extent % LANES == 0 else extent])
    others = [loop for i, loop in enumerate(loops) if i != axis]
    sch.reorder(*others[:axis], vectors, *others[axis:], lane)
    sch.parallel(sch.fuse(*others[:axis], vectors))
    sch.vectorize(lane)
    return True


def _spatial_loop_count(sch: s_tir.Schedule, block) -> int:
    """Leading data-parallel iterators of an unscheduled block (its loops follow them in order)."""
    count = 0
    for iter_var in sch.get(block).iter_vars:
        if iter_var.iter_type != tirx.IterVar.DataPar:
            break
        count += 1
    return count


def _parallelize(sch: s_tir.Schedule, block, keep_inner: bool = False) -> None:
    """Fuse the block's leading spatial loops into one parallel loop (all of them, or all but
    the innermost with `keep_inner` when there are several, and then only when the nest runs at
    least MIN_PARALLEL iterations, its reduction loops included)."""
    spatial = _spatial_loop_count(sch, block)
    loops = sch.get_loops(block)
    if not spatial or len(loops) != len(sch.get(block).iter_vars):
        return
    extents = [sch.get(loop).extent for loop in loops]
    if not all(isinstance(e, tirx.IntImm) for e in extents[:spatial]):
        return
    if keep_inner:
        if spatial > 1:
            spatial -= 1
        known = all(isinstance(e, tirx.IntImm) for e in extents)
        if known and np.prod([e.value for e in extents]) < MIN_PARALLEL:
            return
    sch.parallel(sch.fuse(*loops[:spatial]))


def _unroll(sch: s_tir.Schedule, loop, chunk: int = UNROLL) -> None:
    """Unroll `loop`, in chunks of `chunk` iterations where it is longer."""
    extent = sch.get(loop).extent
    if isinstance(extent, tirx.IntImm) and extent.value > chunk:
        _, loop = sch.split(loop, factors=[None, chunk])
    sch.unroll(loop)
