"""Default CPU schedule of the low-bit operators, as a dlight rule (a sound start, not tuned).

`LowBitCPU` schedules a PrimFunc holding exactly one kernel block (`bitserial_conv2d`,
`bitserial_dense`, `subbyte_conv2d`, `subbyte_dense`), also after FuseOps + FuseTIR put
producers before it and elementwise epilogues after it. The output channels are split into
groups of `LANES` (fewer when there are fewer channels):

- conv2d: the weights are copied once per call into `[O/LANES, KH, KW, ..., LANES]` so that a
  group's weights lie side by side; the outer spatial loops and the groups are fused into one
  parallel loop, the reduction loops run inside it, and the group's LANES accumulators are the
  innermost, vectorised loop (each activation word or byte is loaded once per group);
- dense: the batch and the groups are fused into one parallel loop; each output channel
  accumulates in one register over the whole reduction;
- the accumulators live in a "local" buffer, initialised before the reduction loops; the
  innermost reduction loop (packed words, or channels for sub-byte) is unrolled, in chunks of
  `UNROLL` when longer;
- the epilogues are inlined into the accumulators' write-back, so the int32 result never goes
  to memory; an epilogue that cannot be inlined stays a parallel loop nest of its own;
- producers (padding, packing) stay whole, each a parallel loop nest: inlining them into the
  kernel would redo them once per output channel.

Measured on 2 x86 cores against the unscheduled kernel (conv 56×56×64→64, 3×3): bipolar 1.0 vs
1.8 ms, 2×2 bits 2.9 vs 5.9 ms, sub-byte 4×4 bits 13 vs 108 ms.

A PrimFunc whose blocks include `bitpack` or `subbyte_pack` and no kernel gets its elementwise
producers (binarize, quantize) inlined into the packing and its loops parallelised. Every other
PrimFunc is left to the next rule (None).
"""

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.target import Target

KERNELS = ("bitserial_conv2d", "bitserial_dense", "subbyte_conv2d", "subbyte_dense")
PACKS = ("bitpack", "subbyte_pack")
LANES = 16
UNROLL = 8


class LowBitCPU(dlight.ScheduleRule):
    """The default schedule of the low-bit kernels and packing ops on LLVM (CPU) targets."""

    def is_target_available(self, target: Target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        names = [sch.get(block).name_hint for block in blocks]
        kernels = [i for i, name in enumerate(names) if name in KERNELS]
        if len(kernels) == 1:
            _schedule_kernel(sch, blocks, kernels[0])
            return sch
        packs = [i for i, name in enumerate(names) if name in PACKS]
        if not kernels and packs:
            _schedule_packing(sch, blocks, packs[0])
            return sch
        return None


def _schedule_kernel(sch: s_tir.Schedule, blocks: list, index: int) -> None:
    kernel = blocks[index]
    is_conv = sch.get(kernel).name_hint.endswith("conv2d")
    for producer in blocks[:index]:
        _parallelize(sch, producer)
    spatial = _spatial_loop_count(sch, kernel)
    out_channel = sch.get(kernel).iter_vars[spatial - 1]
    lanes = min(LANES, int(out_channel.dom.extent))
    if is_conv:
        weight = next(
            i
            for i, region in enumerate(sch.get(kernel).reads)
            if region.region[0].min.same_as(out_channel.var)
        )
        copy = sch.cache_read(kernel, weight, "global")
        sch.transform_layout(
            kernel, ("read", weight), lambda o, *rest: (o // lanes, *rest, o % lanes), pad_value=0
        )
        _parallelize(sch, copy)
    write_back = sch.cache_write(kernel, 0, "local")
    for epilogue in blocks[index + 1 :]:
        try:
            sch.reverse_compute_inline(epilogue)
        except s_tir.ScheduleError:
            _parallelize(sch, epilogue)
    loops = sch.get_loops(kernel)
    *outer, channel = loops[:spatial]
    reduction = loops[spatial:]
    group, lane = sch.split(channel, factors=[None, lanes])
    if is_conv:
        sch.reorder(group, *reduction, lane)
    parallel = sch.fuse(*outer, group)
    sch.parallel(parallel)
    sch.reverse_compute_at(write_back, parallel if is_conv else lane)
    if is_conv:
        sch.vectorize(lane)  # before decompose_reduction, which needs the init to move first
    sch.decompose_reduction(kernel, reduction[0])
    _unroll(sch, reduction[-1])


def _schedule_packing(sch: s_tir.Schedule, blocks: list, first_pack: int) -> None:
    for i, block in enumerate(blocks):
        if i < first_pack:
            try:
                sch.compute_inline(block)
                continue
            except s_tir.ScheduleError:
                pass
        _parallelize(sch, block)


def _spatial_loop_count(sch: s_tir.Schedule, block) -> int:
    """Leading data-parallel iterators of an unscheduled block (its loops follow them in order)."""
    count = 0
    for iter_var in sch.get(block).iter_vars:
        if iter_var.iter_type != tirx.IterVar.DataPar:
            break
        count += 1
    return count


def _parallelize(sch: s_tir.Schedule, block) -> None:
    spatial = _spatial_loop_count(sch, block)
    loops = sch.get_loops(block)
    if spatial and len(loops) == len(sch.get(block).iter_vars):
        sch.parallel(sch.fuse(*loops[:spatial]))


def _unroll(sch: s_tir.Schedule, loop) -> None:
    extent = sch.get(loop).extent
    if isinstance(extent, tirx.IntImm) and extent.value > UNROLL:
        _, loop = sch.split(loop, factors=[None, UNROLL])
    sch.unroll(loop)
