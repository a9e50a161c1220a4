"""TilesOnStack: a CPU function's small "local" buffers (the schedules' register tiles) are
marked to stay stack arrays; TVM's LowerTVMBuiltin otherwise allocates each from the runtime's
workspace, once per tile."""

import tvm
from tvm import tirx
from tvm.script import tirx as T

from tvmbits.passes.tiles_on_stack import TIR_PIPELINE, TilesOnStack

LLVM = tvm.target.Target({"kind": "llvm"})


@T.prim_func(s_tir=False)
def tiles(a: T.Buffer((4096,), "int32"), b: T.Buffer((4096,), "int32")):
    T.func_attr({"global_symbol": "main"})
    for i in T.parallel(4):
        tile = T.alloc_local((256,), "int32")  # 1 KiB: a 16-vector AVX-512 register tile
        big = T.alloc_local((1025,), "int32")  # over MAX_TILE_BYTES
        for j in range(256):
            tile[j] = a[i * 1024 + j]
        for j in range(1025):
            big[j] = a[j]
        for j in range(256):
            b[i * 1024 + j] = tile[j] + big[j]


@T.prim_func(s_tir=False)
def expected(a: T.Buffer((4096,), "int32"), b: T.Buffer((4096,), "int32")):
    T.func_attr({"global_symbol": "main"})
    for i in T.parallel(4):
        tile = T.alloc_local((256,), "int32", annotations={"disable_lower_builtin": T.bool(True)})
        big = T.alloc_local((1025,), "int32")
        for j in range(256):
            tile[j] = a[i * 1024 + j]
        for j in range(1025):
            big[j] = a[j]
        for j in range(256):
            b[i * 1024 + j] = tile[j] + big[j]


def test_small_local_buffers_of_a_cpu_function_are_marked():
    after = TilesOnStack(tvm.IRModule({"main": tiles.with_attr("target", LLVM)}))
    tvm.ir.assert_structural_equal(after, tvm.IRModule({"main": expected.with_attr("target", LLVM)}))


def test_functions_of_other_targets_are_untouched():
    before = tvm.IRModule({"main": tiles.with_attr("target", tvm.target.Target({"kind": "cuda", "arch": "sm_80"}))})
    tvm.ir.assert_structural_equal(TilesOnStack(before), before)


def _workspace_calls(pipeline: str) -> int:
    """TVMBackendAllocWorkspace calls in the host code `pipeline` lowers `tiles` to."""
    mod = tirx.transform.BindTarget(LLVM.with_host(LLVM))(tvm.IRModule({"main": tiles}))
    lower, finalize_host, _ = tirx.compilation_pipeline.get_tir_pipeline(pipeline)
    return finalize_host()(lower(mod)).script().count("TVMBackendAllocWorkspace")


def test_lower_tvm_builtin_keeps_the_marked_tile_on_the_stack():
    assert _workspace_calls("default") == 2  # both buffers, once per tile
    assert _workspace_calls(TIR_PIPELINE) == 1  # the buffer over MAX_TILE_BYTES
