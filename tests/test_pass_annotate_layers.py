"""AnnotateLayers on the IR it produces: each named layer call becomes a call of a private
layer function holding it (and the Sign and layout ops feeding it), in every function."""

import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from tvmbits.errors import ModelError
from tvmbits.passes.annotate_layers import AnnotateLayers



def test_conv1d_before_a_conv2d_both_wrapped_under_their_names():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 3, 8), "float32"), w1: R.Tensor((4, 3, 3), "float32"),
                 w2: R.Tensor((5, 3, 3, 4), "float32")) -> R.Tensor((1, 8, 1, 5), "float32"):
            with R.dataflow():
                onnx__c1 = R.nn.conv1d(x, w1, padding=[1, 1])
                e = R.expand_dims(onnx__c1, axis=[3])
                t = R.permute_dims(e, axes=[0, 2, 3, 1])
                s = R.sign(t)
                onnx__c2 = R.nn.conv2d(s, w2, padding=[1, 1, 1, 1], data_layout="NHWC", kernel_layout="OHWI")
                R.output(onnx__c2)
            return onnx__c2

    @I.ir_module
    class Expected:
        @R.function(private=True)
        def layer_c1(data: R.Tensor((1, 3, 8), "float32"), weight: R.Tensor((4, 3, 3), "float32")) -> R.Tensor((1, 4, 8), "float32"):
            R.func_attr({"tvmbits.layer": "c1", "tvmbits.op": "conv1d"})
            with R.dataflow():
                gv = R.nn.conv1d(data, weight, padding=[1, 1])
                R.output(gv)
            return gv

        @R.function(private=True)
        def layer_c2(data: R.Tensor((1, 8, 1, 4), "float32"), weight: R.Tensor((5, 3, 3, 4), "float32")) -> R.Tensor((1, 8, 1, 5), "float32"):
            R.func_attr({"tvmbits.layer": "c2", "tvmbits.op": "conv2d"})
            with R.dataflow():
                s = R.sign(data)
                gv = R.nn.conv2d(s, weight, padding=[1, 1, 1, 1], data_layout="NHWC", kernel_layout="OHWI")
                R.output(gv)
            return gv

        @R.function
        def main(x: R.Tensor((1, 3, 8), "float32"), w1: R.Tensor((4, 3, 3), "float32"),
                 w2: R.Tensor((5, 3, 3, 4), "float32")) -> R.Tensor((1, 8, 1, 5), "float32"):
            cls = Expected
            with R.dataflow():
                onnx__c1 = cls.layer_c1(x, w1)
                e = R.expand_dims(onnx__c1, axis=[3])
                t = R.permute_dims(e, axes=[0, 2, 3, 1])
                s = R.sign(t)
                onnx__c2 = cls.layer_c2(t, w2)
                R.output(onnx__c2)
            return onnx__c2

    tvm.ir.assert_structural_equal(AnnotateLayers(["c1", "c2"])(Before), Expected)


def test_dense_reached_through_transpose_and_reshape_of_a_sign():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 2, 2, 3), "float32"), w: R.Tensor((12, 4), "float32")) -> R.Tensor((1, 4), "float32"):
            with R.dataflow():
                s = R.sign(x)
                t = R.permute_dims(s, axes=[0, 3, 1, 2])
                f = R.reshape(t, R.shape([1, 12]))
                onnx__fc = R.matmul(f, w)
                R.output(onnx__fc)
            return onnx__fc

    @I.ir_module
    class Expected:
        @R.function(private=True)
        def layer_fc(data: R.Tensor((1, 2, 2, 3), "float32"), weight: R.Tensor((12, 4), "float32")) -> R.Tensor((1, 4), "float32"):
            R.func_attr({"tvmbits.layer": "fc", "tvmbits.op": "dense"})
            with R.dataflow():
                s = R.sign(data)
                t = R.permute_dims(s, axes=[0, 3, 1, 2])
                f = R.reshape(t, R.shape([1, 12]))
                gv = R.matmul(f, weight)
                R.output(gv)
            return gv

        @R.function
        def main(x: R.Tensor((1, 2, 2, 3), "float32"), w: R.Tensor((12, 4), "float32")) -> R.Tensor((1, 4), "float32"):
            cls = Expected
            with R.dataflow():
                s = R.sign(x)
                t = R.permute_dims(s, axes=[0, 3, 1, 2])
                f = R.reshape(t, R.shape([1, 12]))
                onnx__fc = cls.layer_fc(x, w)
                R.output(onnx__fc)
            return onnx__fc

    tvm.ir.assert_structural_equal(AnnotateLayers(["fc"])(Before), Expected)


def test_layers_of_a_function_other_than_main_and_a_name_moved_onto_a_transpose():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4), "float32"), w: R.Tensor((4, 2), "float32")) -> R.Tensor((1, 2), "float32"):
            with R.dataflow():
                onnx__a = R.matmul(x, w)
                R.output(onnx__a)
            return onnx__a

        @R.function
        def other(x: R.Tensor((1, 5, 5, 2), "float32"), w: R.Tensor((3, 1, 1, 2), "float32")) -> R.Tensor((1, 3, 5, 5), "float32"):
            with R.dataflow():
                c = R.nn.conv2d(x, w, data_layout="NHWC", kernel_layout="OHWI")
                onnx__b = R.permute_dims(c, axes=[0, 3, 1, 2])  # ConvertLayout's edge transpose
                R.output(onnx__b)
            return onnx__b

    @I.ir_module
    class Expected:
        @R.function(private=True)
        def layer_a(data: R.Tensor((1, 4), "float32"), weight: R.Tensor((4, 2), "float32")) -> R.Tensor((1, 2), "float32"):
            R.func_attr({"tvmbits.layer": "a", "tvmbits.op": "dense"})
            with R.dataflow():
                gv = R.matmul(data, weight)
                R.output(gv)
            return gv

        @R.function(private=True)
        def layer_b(data: R.Tensor((1, 5, 5, 2), "float32"), weight: R.Tensor((3, 1, 1, 2), "float32")) -> R.Tensor((1, 5, 5, 3), "float32"):
            R.func_attr({"tvmbits.layer": "b", "tvmbits.op": "conv2d"})
            with R.dataflow():
                gv = R.nn.conv2d(data, weight, data_layout="NHWC", kernel_layout="OHWI")
                R.output(gv)
            return gv

        @R.function
        def main(x: R.Tensor((1, 4), "float32"), w: R.Tensor((4, 2), "float32")) -> R.Tensor((1, 2), "float32"):
            cls = Expected
            with R.dataflow():
                onnx__a = cls.layer_a(x, w)
                R.output(onnx__a)
            return onnx__a

        @R.function
        def other(x: R.Tensor((1, 5, 5, 2), "float32"), w: R.Tensor((3, 1, 1, 2), "float32")) -> R.Tensor((1, 3, 5, 5), "float32"):
            cls = Expected
            with R.dataflow():
                c = cls.layer_b(x, w)
                onnx__b = R.permute_dims(c, axes=[0, 3, 1, 2])
                R.output(onnx__b)
            return onnx__b

    tvm.ir.assert_structural_equal(AnnotateLayers(["a", "b"])(Before), Expected)


def test_unnamed_calls_stay_and_a_missing_layer_is_an_error():
    @I.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((1, 4), "float32"), w: R.Tensor((4, 2), "float32")) -> R.Tensor((1, 2), "float32"):
            with R.dataflow():
                y = R.matmul(x, w)  # not an ONNX layer's call (no name): left alone
                R.output(y)
            return y

    tvm.ir.assert_structural_equal(AnnotateLayers([])(Before), Before)
    with pytest.raises(ModelError, match="layer 'fc' was not found"):
        AnnotateLayers(["fc"])(Before)
