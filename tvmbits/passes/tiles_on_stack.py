"""TilesOnStack: register tiles are stack arrays, not a runtime allocation per tile.

The CPU schedules (`schedules/cpu.py`) keep a register tile's accumulators in a "local"
buffer declared inside the tile loop, so that each parallel tile has its own. TVM's
LowerTVMBuiltin keeps only small "global" buffers on the stack: every "local" one becomes a
TVMBackendAllocWorkspace / TVMBackendFreeWorkspace call pair, run once per tile. Around a
tile of a binarized conv (16 vectors, 288 vector popcounts on 64 input channels), those two
calls took 3–30% of the kernel's time on ResNet-18's 3×3 layers (measured with and without
this pass, in one process). This pass marks each CPU function's "local" allocation of
constant size, at most MAX_TILE_BYTES, with TVM's `disable_lower_builtin` annotation, which
LowerTVMBuiltin leaves as a stack array (LLVM's alloca, which it promotes to registers).

`tvm.compile(..., tir_pipeline=TIR_PIPELINE)` runs TVM's default TIR pipeline and then this
pass, before the host functions are finalized (LowerTVMBuiltin); importing this module
registers that pipeline.
"""

import tvm
import tvm_ffi
from tvm import tirx
from tvm.tirx import compilation_pipeline

TIR_PIPELINE = "tvmbits"
# far above any register tile (16 AVX-512 vectors: 1 KiB) and far below a thread's stack
MAX_TILE_BYTES = 4096
DISABLE_LOWER_BUILTIN = "disable_lower_builtin"  # TVM's transform::kDisableLowerTVMBuiltin


@tirx.transform.prim_func_pass(opt_level=0, name="tvmbits.TilesOnStack")
def TilesOnStack(func: tirx.PrimFunc, _mod, _ctx) -> tirx.PrimFunc:  # noqa: N802 (TVM's pass naming)
    target = func.attrs.get("target") if func.attrs is not None else None
    if target is None or target.kind.name != "llvm":
        return func
    return func.with_body(tvm_ffi.structural_map(func.body, [(tirx.AllocBuffer, _on_stack)]))


def _on_stack(alloc: tirx.AllocBuffer) -> tirx.AllocBuffer:
    buffer = alloc.buffer
    if buffer.scope() != "local" or not all(isinstance(d, tirx.IntImm) for d in buffer.shape):
        return alloc
    dtype = tvm.DataType(buffer.dtype)
    size = dtype.bits * dtype.lanes // 8
    for extent in buffer.shape:
        size *= int(extent)
    if size > MAX_TILE_BYTES:
        return alloc
    annotations = dict(alloc.annotations or {})
    annotations[DISABLE_LOWER_BUILTIN] = tirx.IntImm("bool", 1)
    return tirx.AllocBuffer(buffer, annotations=annotations)


def _pipeline():
    lower, finalize_host, finalize_device = compilation_pipeline.get_tir_pipeline("default")

    @tvm.transform.module_pass(opt_level=0, name="tvmbits.TIRPipeline")
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return TilesOnStack(lower(mod))

    return pipeline, finalize_host, finalize_device


compilation_pipeline.register_tir_pipeline(TIR_PIPELINE, _pipeline)
