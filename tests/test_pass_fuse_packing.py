"""FusePacking on the IR it produces (between FuseOps and FuseTIR): a packing function called on
a kernel function's result is merged into it; the float result stays an output only while
something else reads it; anything else is left alone. The merged module computes the same."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R
from tvm.script import tirx as T

from tvmbits.passes.fuse_packing import KERNEL, PACKING, FusePacking

LLVM = tvm.target.Target({"kind": "llvm"})


@T.prim_func(private=True, s_tir=True)
def kernel(x: T.Buffer((4,), "int32"), y: T.Buffer((4,), "int32")):
    T.func_attr({KERNEL: True, "op_pattern": 4})
    for i in range(4):
        with T.sblock("kernel"):
            vi = T.axis.remap("S", [i])
            y[vi] = x[vi] * 3 - 5


@T.prim_func(private=True, s_tir=True)
def scale(y: T.Buffer((4,), "int32"), z: T.Buffer((4,), "float32")):
    T.func_attr({"op_pattern": 0})
    for i in range(4):
        with T.sblock("scale"):
            vi = T.axis.remap("S", [i])
            z[vi] = T.Cast("float32", y[vi]) * T.float32(0.5)


@T.prim_func(private=True, s_tir=True)
def pack(z: T.Buffer((4,), "float32"), p: T.Buffer((1,), "uint32")):
    T.func_attr({PACKING: True, "op_pattern": 2})
    with T.sblock("pack"):
        p[0] = (T.Cast("uint32", T.Select(z[0] >= T.float32(0), 1, 0))
                | T.shift_left(T.Cast("uint32", T.Select(z[1] >= T.float32(0), 1, 0)), T.uint32(1))
                | T.shift_left(T.Cast("uint32", T.Select(z[2] >= T.float32(0), 1, 0)), T.uint32(2))
                | T.shift_left(T.Cast("uint32", T.Select(z[3] >= T.float32(0), 1, 0)), T.uint32(3)))


INT4, FLOAT4, WORD = R.Tensor((4,), "int32"), R.Tensor((4,), "float32"), R.Tensor((1,), "uint32")
PRIMITIVE = {"Primitive": True}


def _builder() -> tuple:
    """A builder holding the three PrimFuncs, and their global variables."""
    builder = relax.BlockBuilder()
    return builder, *(builder.add_func(func, name) for func, name in ((kernel, "kernel"), (scale, "scale"), (pack, "pack")))


def _function(builder, name, param_ty, calls, outputs):
    """A primitive function of FuseOps' form: call_tir of `calls` [(PrimFunc, type)] in a chain
    from one parameter, the bindings numbered in `outputs` as its outputs (one: returned
    alone; two: as a tuple)."""
    param = relax.Var("a", param_ty)
    with builder.function(name, [param], PRIMITIVE, private=True):
        with builder.dataflow():
            values, value = [], param
            for i, (prim, ty) in enumerate(calls):
                emit = builder.emit_output if i in outputs else builder.emit
                value = emit(relax.call_tir(prim, (value,), ty))
                values.append(value)
        chosen = [values[i] for i in outputs]
        builder.emit_func_output(chosen[0] if len(chosen) == 1 else relax.Tuple(chosen))
    return builder.get().get_global_var(name)


def _main(builder, body):
    x = relax.Var("x", INT4)
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(body(x))
        builder.emit_func_output(out)
    return builder.get()


def before(shortcut: bool) -> tvm.IRModule:
    """main(x): z = fused_kernel_scale(x); p = fused_pack(z); returns p, with `shortcut` (p, z + z):
    a low-bit layer's result as FuseOps leaves it, read by the next layer's packing (and a residual)."""
    builder, kernel_fn, scale_fn, pack_fn = _builder()
    layer = _function(builder, "fused_kernel_scale", INT4, [(kernel_fn, INT4), (scale_fn, FLOAT4)], [1])
    packing = _function(builder, "fused_pack", FLOAT4, [(pack_fn, WORD)], [0])

    def body(x):
        z = builder.emit(relax.Call(layer, [x]))
        p = builder.emit(relax.Call(packing, [z]))
        return relax.Tuple([p, builder.emit(relax.op.add(z, z))]) if shortcut else p

    return _main(builder, body)


def expected(shortcut: bool) -> tvm.IRModule:
    """main(x): p = fused_kernel_scale_pack(x), whose result is (z, p) with `shortcut`."""
    builder, kernel_fn, scale_fn, pack_fn = _builder()
    calls = [(kernel_fn, INT4), (scale_fn, FLOAT4), (pack_fn, WORD)]
    merged = _function(builder, "fused_kernel_scale_pack", INT4, calls, [1, 2] if shortcut else [2])

    def body(x):
        if not shortcut:
            return builder.emit(relax.Call(merged, [x]))
        pair = builder.emit(relax.Call(merged, [x]))
        z, p = builder.emit(relax.TupleGetItem(pair, 0)), builder.emit(relax.TupleGetItem(pair, 1))
        return relax.Tuple([p, builder.emit(relax.op.add(z, z))])

    return _main(builder, body)


def _run(mod: tvm.IRModule) -> list[np.ndarray]:
    mod = relax.transform.FuseTIR()(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target=LLVM), tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(np.array([1, 2, -3, 0], np.int32)))
    return [t.numpy() for t in (out if isinstance(out, tvm.ir.Array) else [out])]


@pytest.mark.parametrize("shortcut", [False, True], ids=["packed-only", "float-read-too"])
def test_packing_merges_into_the_kernel_function(shortcut):
    tvm.ir.assert_structural_equal(FusePacking(before(shortcut)), expected(shortcut))


@pytest.mark.parametrize("shortcut", [False, True], ids=["packed-only", "float-read-too"])
def test_same_results_after_fuse_tir(shortcut):
    """x = [1, 2, -3, 0]: z = (3x - 5) / 2 = [-1, 0.5, -7, -2.5], packed bits 0b0010."""
    results = _run(FusePacking(before(shortcut)))
    assert results[0].tolist() == [0b0010]
    for got, want in zip(results, _run(before(shortcut))):
        np.testing.assert_array_equal(got, want)


def test_packing_of_a_non_kernel_result_stays():
    """The packing of a function without a kernel PrimFunc (e.g. the float stem's) is left alone."""
    builder, _, scale_fn, pack_fn = _builder()
    layer = _function(builder, "fused_scale", INT4, [(scale_fn, FLOAT4)], [0])
    packing = _function(builder, "fused_pack", FLOAT4, [(pack_fn, WORD)], [0])
    mod = _main(builder, lambda x: builder.emit(relax.Call(packing, [builder.emit(relax.Call(layer, [x]))])))
    tvm.ir.assert_structural_equal(FusePacking(mod), relax.transform.DeadCodeElimination()(mod))


def test_a_lone_packing_call_merges_too():
    """FuseOps leaves a packing op with nothing to fuse as a plain call_tir (a kernel whose own
    function already ends in the Sign): it merges the same way."""
    builder, kernel_fn, scale_fn, pack_fn = _builder()
    layer = _function(builder, "fused_kernel_scale", INT4, [(kernel_fn, INT4), (scale_fn, FLOAT4)], [1])
    mod = _main(builder, lambda x: builder.emit(
        relax.call_tir(pack_fn, (builder.emit(relax.Call(layer, [x])),), WORD)))
    tvm.ir.assert_structural_equal(FusePacking(mod), expected(shortcut=False))
