"""LowerLowBit on the IR it produces: a low-bit layer's call becomes binarize → bitpack →
kernel → float epilogue, a float layer's call its own body, and the layer functions go."""

import numpy as np
import tvm
from tvm import relax

from test_pass_plan_layers import W_BINARY, W_FLOAT, Before
from tvmbits.ops.bitpack import bitpack, pack_bits
from tvmbits.ops.bitserial_conv2d import bitserial_conv2d_nhwc
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.quantize import binarize
from tvmbits.passes.fold_thresholds import BINARIZE
from tvmbits.passes.fuse_packing import KERNEL, PACKING
from tvmbits.passes.lower_lowbit import LowerLowBit
from tvmbits.passes.plan_layers import PlanLayers

BIPOLAR = Encoding("bipolar", 1)


def expected() -> tvm.IRModule:
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 5, 5, 2), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            codes = builder.emit_te(binarize, x, primfunc_name_hint="binarize", primfunc_attrs={BINARIZE: True})
            packed = builder.emit_te(bitpack, codes, 1, primfunc_name_hint="bitpack", primfunc_attrs={PACKING: True})
            weight = relax.const(pack_bits(BIPOLAR.encode(np.where(W_BINARY >= 0, 1, -1)), 1))
            acc = builder.emit_te(
                lambda d, w: bitserial_conv2d_nhwc(d, w, 2, BIPOLAR, BIPOLAR, (1, 1), (1, 1, 1, 1)),
                packed, weight, primfunc_name_hint="bitserial_conv2d",
                primfunc_attrs={"op_pattern": 4, KERNEL: True},
            )
            acc = builder.emit(relax.op.astype(acc, "float32"))
            scale = np.abs(W_BINARY.reshape(4, -1)).max(axis=1).astype(np.float32)
            a = builder.emit(relax.op.multiply(acc, relax.const(scale)))
            out = builder.emit_output(
                relax.op.nn.conv2d(a, relax.const(W_FLOAT), data_layout="NHWC", kernel_layout="OHWI")
            )
        builder.emit_func_output(out)
    return builder.get()


def test_lowbit_layer_lowered_and_float_layer_inlined():
    after = LowerLowBit(PlanLayers(byte_dot=False)(Before))
    tvm.ir.assert_structural_equal(after, expected())
