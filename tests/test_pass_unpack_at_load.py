"""UnpackAtLoad on the IR it produces: a marked unpacking call on a constant moves from `main`
into `prepare`, whose results `main` takes after its inputs; the compile pipeline's constant
folding leaves `prepare` alone, so the artifact keeps the packed bytes and no model run unpacks."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

import tvmbits
from onnx_models import float_cnn
from tvmbits.passes.pipeline import Fuse, PrepackWeights
from tvmbits.passes.unpack_at_load import PREPARE, UNPACK_AT_LOAD, UnpackAtLoad

LLVM = tvm.target.Target({"kind": "llvm"})
PACKED = np.array([0x21, 0xF3], np.uint8)  # nibbles 1, 2, 3, 15 (low first)


@I.ir_module
class Before:
    @T.prim_func(private=True, s_tir=True)
    def unpack(p: T.Buffer((2,), "uint8"), w: T.Buffer((4,), "int8")):
        T.func_attr({UNPACK_AT_LOAD: True, "op_pattern": 8})
        for i in range(4):
            with T.sblock("w"):
                vi = T.axis.remap("S", [i])
                w[vi] = T.Cast("int8", T.shift_right(T.Cast("int32", p[vi // 2]), vi % 2 * 4) & 15)

    @T.prim_func(private=True, s_tir=True)
    def kernel(x: T.Buffer((4,), "int32"), w: T.Buffer((4,), "int8"), y: T.Buffer((4,), "int32")):
        for i in range(4):
            with T.sblock("y"):
                vi = T.axis.remap("S", [i])
                y[vi] = x[vi] * T.Cast("int32", w[vi])

    @R.function
    def main(x: R.Tensor((4,), "int32")) -> R.Tensor((4,), "int32"):
        cls = Before
        with R.dataflow():
            w = R.call_tir(cls.unpack, (R.const(PACKED),), R.Tensor((4,), "int8"))
            y = R.call_tir(cls.kernel, (x, w), R.Tensor((4,), "int32"))
            R.output(y)
        return y


UNPACK, KERNEL = Before.get_global_var("unpack"), Before.get_global_var("kernel")


def expected() -> tvm.IRModule:
    """Before's functions, with `prepare() = (unpack(PACKED),)` and `main(x, w) = kernel(x, w)`."""
    builder = relax.BlockBuilder(tvm.IRModule({UNPACK: Before[UNPACK], KERNEL: Before[KERNEL]}))
    with builder.function(PREPARE, []):
        w = builder.emit(relax.call_tir(UNPACK, (relax.const(PACKED),), R.Tensor((4,), "int8")))
        builder.emit_func_output(relax.Tuple([w]))
    x, w = relax.Var("x", R.Tensor((4,), "int32")), relax.Var("w", R.Tensor((4,), "int8"))
    with builder.function("main", [x, w]):
        with builder.dataflow():
            y = builder.emit_output(relax.call_tir(KERNEL, (x, w), R.Tensor((4,), "int32")))
        builder.emit_func_output(y)
    return builder.get()


def _vm(mod: tvm.IRModule) -> relax.VirtualMachine:
    return relax.VirtualMachine(tvm.compile(mod, target=LLVM), tvm.cpu())


def test_unpacking_moves_to_prepare():
    tvm.ir.assert_structural_equal(UnpackAtLoad(Before), expected())


def test_same_result_with_the_prepared_weights():
    x = np.array([3, -1, 2, 5], np.int32)
    before = _vm(Before)["main"](tvm.runtime.tensor(x)).numpy()
    vm = _vm(UnpackAtLoad(Before))
    after = vm["main"](tvm.runtime.tensor(x), *vm[PREPARE]()).numpy()
    np.testing.assert_array_equal(before, x * [1, 2, 3, 15])
    np.testing.assert_array_equal(after, before)


def test_a_module_without_unpacking_gets_an_empty_prepare():
    builder = relax.BlockBuilder(tvm.IRModule({KERNEL: Before[KERNEL]}))
    x, w = relax.Var("x", R.Tensor((4,), "int32")), relax.Var("w", R.Tensor((4,), "int8"))
    with builder.function("main", [x, w]):
        with builder.dataflow():
            y = builder.emit_output(relax.call_tir(KERNEL, (x, w), R.Tensor((4,), "int32")))
        builder.emit_func_output(y)
    before = builder.get()
    after = UnpackAtLoad(before)
    tvm.ir.assert_structural_equal(after["main"], before["main"])
    assert len(after[PREPARE].body.body.fields) == 0


def test_unpacking_of_a_non_constant_stays_in_main():
    builder = relax.BlockBuilder(tvm.IRModule({UNPACK: Before[UNPACK]}))
    p = relax.Var("p", R.Tensor((2,), "uint8"))
    with builder.function("main", [p]):
        with builder.dataflow():
            w = builder.emit_output(relax.call_tir(UNPACK, (p,), R.Tensor((4,), "int8")))
        builder.emit_func_output(w)
    after = UnpackAtLoad(builder.get())
    assert len(after["main"].params) == 1 and len(after[PREPARE].body.body.fields) == 0


@pytest.mark.parametrize("phase", [Fuse(LLVM), PrepackWeights(LLVM)], ids=["Fuse", "PrepackWeights"])
def test_the_pipeline_does_not_fold_prepare(phase):
    """Both phases fold constants; `prepare` must still unpack the stored bytes, and the
    unpacking function it calls must survive FuseTIR, which drops functions main does not call."""
    before = expected()
    after = phase(before)
    tvm.ir.assert_structural_equal(after[PREPARE], before[PREPARE])
    assert "unpack" in [gv.name_hint for gv in after.get_global_vars()]


def test_a_compiled_sub_byte_model_unpacks_at_load_only():
    """W4A4: the library stores 4-bit fields (`prepare` reads uint8 constants of half the
    unpacked size) and a model run calls no unpacking function."""
    model = float_cnn()
    art = tvmbits.compile(model, "x86_64", wbits=4, abits=4, all_layers=True, use_tuning=False)
    compiled = tvmbits.load(art)
    x = np.random.default_rng(0).standard_normal(compiled.inputs[0]["shape"]).astype(np.float32)
    names = [row["name"] for row in compiled.profile({compiled.inputs[0]["name"]: x}, runs=1)]
    assert names and not any("unpack" in name for name in names), names
    prepared = compiled.loaded.prepared
    lowbit = [layer for layer in art.metadata["layers"] if layer["kernel"] == "subbyte"]
    assert len(prepared) == len(lowbit) > 0
    assert all(str(t.dtype) == "int8" for t in prepared)
    stored = sum(layer["weight_bytes_packed"] for layer in lowbit)
    assert stored * 2 == sum(int(np.prod(t.shape)) for t in prepared)
