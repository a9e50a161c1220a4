"""LowerLowBit under a CUDA target: the same layer becomes the kernel's GEMM form, with its
per-pixel term (`bitserial_offset`, `window_offset`) and its weight term (`bitserial_weight_term`,
`weight_sums` of the constant weights) emitted as functions of their own before it."""

import numpy as np
import pytest
import tvm
from tvm import relax

from test_pass_plan_layers import W_BINARY, W_FLOAT, Before
from tvmbits.ops.bitpack import bitpack, pack_bits
from tvmbits.ops.bitserial_conv2d import window_offset
from tvmbits.ops.bitserial_gemm import bitserial_conv2d_gemm, weight_sums
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.quantize import binarize
from tvmbits.ops.window import Window
from tvmbits.passes.fold_thresholds import BINARIZE
from tvmbits.passes.fuse_packing import KERNEL, PACKING
from tvmbits.passes.lower_lowbit import LowerLowBit
from tvmbits.passes.plan_layers import PlanLayers

pytestmark = pytest.mark.unit

BIPOLAR = Encoding("bipolar", 1)
CONV = ((1, 1), (1, 1, 1, 1))


def expected() -> tvm.IRModule:
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 5, 5, 2), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            codes = builder.emit_te(binarize, x, primfunc_name_hint="binarize", primfunc_attrs={BINARIZE: True})
            packed = builder.emit_te(bitpack, codes, 1, primfunc_name_hint="bitpack", primfunc_attrs={PACKING: True})
            weight = relax.const(pack_bits(BIPOLAR.encode(np.where(W_BINARY >= 0, 1, -1)), 1))
            offset = builder.emit_te(lambda d: window_offset(d, 2, BIPOLAR, BIPOLAR, (3, 3), *CONV), packed,
                                     primfunc_name_hint="bitserial_offset")
            window = Window.of((5, 5), (3, 3), *CONV)
            table = builder.emit_te(lambda w: weight_sums(w, BIPOLAR, BIPOLAR, window), weight,
                                    primfunc_name_hint="bitserial_weight_term")
            acc = builder.emit_te(
                lambda d, w, o, t: bitserial_conv2d_gemm(d, w, 2, BIPOLAR, BIPOLAR, *CONV, offset=o, weight_term=t),
                packed, weight, offset, table, primfunc_name_hint="bitserial_conv2d",
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


def test_bitserial_layer_lowered_to_its_gemm_form_for_cuda():
    planned = PlanLayers()(Before)
    with tvm.target.Target({"kind": "cuda", "arch": "sm_80"}):
        after = LowerLowBit(planned)
    tvm.ir.assert_structural_equal(after, expected())
