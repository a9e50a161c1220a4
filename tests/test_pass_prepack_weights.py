"""PrepackWeights on the IR it produces: a kernel's weight copy annotated by the schedule
becomes a compile-time constant the kernel reads directly; a weight that is not a constant
keeps its copy, as a call of its own before the kernel."""

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from tvmbits.passes.pipeline import PrepackWeights
from tvmbits.schedules.cpu import PREPACK

LLVM = tvm.target.Target({"kind": "llvm"})
W = np.arange(8, dtype=np.float32).reshape(4, 2)


@I.ir_module
class Before:
    @T.prim_func(private=True, s_tir=True)
    def kernel(x: T.Buffer((4,), "float32"), w: T.Buffer((4, 2), "float32"), y: T.Buffer((4,), "float32")):
        """y[i] = x[i] · (w[i, 0] + w[i, 1]), reading w through a transposed copy."""
        w_global = T.sblock_alloc_buffer((2, 4))
        for i, j in T.grid(4, 2):
            with T.sblock("w_global"):
                T.sblock_attr({PREPACK: 1})
                vi, vj = T.axis.remap("SS", [i, j])
                w_global[vj, vi] = w[vi, vj]
        for i in range(4):
            with T.sblock("y"):
                vi = T.axis.remap("S", [i])
                y[vi] = x[vi] * (w_global[0, vi] + w_global[1, vi])

    @R.function
    def main(x: R.Tensor((4,), "float32")) -> R.Tensor((4,), "float32"):
        cls = Before
        with R.dataflow():
            y = R.call_tir(cls.kernel, (x, R.const(W)), R.Tensor((4,), "float32"))
            R.output(y)
        return y


@I.ir_module
class Expected:
    @T.prim_func(private=True, s_tir=True)
    def kernel_prepacked(x: T.Buffer((4,), "float32"), w_global: T.Buffer((2, 4), "float32"),
                         y: T.Buffer((4,), "float32")):
        for i in range(4):
            with T.sblock("y"):
                vi = T.axis.remap("S", [i])
                y[vi] = x[vi] * (w_global[0, vi] + w_global[1, vi])

    @R.function
    def main(x: R.Tensor((4,), "float32")) -> R.Tensor((4,), "float32"):
        cls = Expected
        with R.dataflow():
            y = R.call_tir(cls.kernel_prepacked, (x, R.const(np.ascontiguousarray(W.T))), R.Tensor((4,), "float32"))
            R.output(y)
        return y


def _run(mod: tvm.IRModule, *args: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target=LLVM), tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(a) for a in args)).numpy()


def test_constant_weight_copied_at_compile_time():
    tvm.ir.assert_structural_equal(PrepackWeights(LLVM)(Before), Expected)


def test_same_result():
    x = np.array([1, -2, 3, 0.5], np.float32)
    np.testing.assert_array_equal(_run(PrepackWeights(LLVM)(Before), x), _run(Before, x))
    np.testing.assert_array_equal(_run(Before, x), x * W.sum(axis=1))


def test_weight_that_is_an_input_keeps_its_copy_as_a_call():
    builder = relax.BlockBuilder(tvm.IRModule({Before.get_global_var("kernel"): Before["kernel"]}))
    x, w = relax.Var("x", R.Tensor((4,), "float32")), relax.Var("w", R.Tensor((4, 2), "float32"))
    with builder.function("main", [x, w]):
        with builder.dataflow():
            y = builder.emit_output(relax.call_tir(Before.get_global_var("kernel"), (x, w), R.Tensor((4,), "float32")))
        builder.emit_func_output(y)
    after = PrepackWeights(LLVM)(builder.get())
    assert sorted(gv.name_hint for gv in after.functions) == ["kernel_prepacked", "kernel_weight_prepack", "main"]
    x = np.array([1, -2, 3, 0.5], np.float32)
    np.testing.assert_array_equal(_run(after, x, W), x * W.sum(axis=1))
