"""FoldFlattenTranspose on the IR it produces: an NCHW flatten of NHWC data before a dense
layer becomes an NHWC flatten, the weight's rows reordered to match; the product is unchanged."""

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvmbits.passes.fold_flatten_transpose import FoldFlattenTranspose

W = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(4 * 2 * 3, 5)  # rows in (c, h, w) order
W_HWC = W.reshape(4, 2, 3, 5).transpose(1, 2, 0, 3).reshape(24, 5)  # rows in (h, w, c) order


@I.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 2, 3, 4), "float32")) -> R.Tensor((1, 5), "float32"):
        with R.dataflow():
            s = R.sign(x)
            t = R.permute_dims(s, axes=[0, 3, 1, 2])
            f = R.reshape(t, R.shape([1, 24]))
            onnx__fc = R.matmul(f, R.const(W))
            R.output(onnx__fc)
        return onnx__fc


@I.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 2, 3, 4), "float32")) -> R.Tensor((1, 5), "float32"):
        with R.dataflow():
            s = R.sign(x)
            f = R.reshape(s, R.shape([1, 24]))
            onnx__fc = R.matmul(f, R.const(W_HWC))
            R.output(onnx__fc)
        return onnx__fc


def test_transpose_folded_into_the_weight():
    tvm.ir.assert_structural_equal(FoldFlattenTranspose(Before), Expected)


def test_same_product():
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 4)).astype(np.float32)
    results = []
    for mod in (Before, FoldFlattenTranspose(Before)):
        vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
        results.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6)


def test_other_transposes_stay():
    @I.ir_module
    class Other:
        @R.function
        def main(x: R.Tensor((1, 2, 3, 4), "float32")) -> R.Tensor((1, 5), "float32"):
            with R.dataflow():
                t = R.permute_dims(x, axes=[0, 2, 1, 3])  # not NHWC → NCHW
                f = R.reshape(t, R.shape([1, 24]))
                y = R.matmul(f, R.const(W))
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(FoldFlattenTranspose(Other), Other)
