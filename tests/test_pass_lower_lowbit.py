"""LowerLowBit on the IR it produces: a low-bit layer's call becomes binarize → bitpack →
kernel → float epilogue, a float layer's call its own body, and the layer functions go."""

import numpy as np
import tvm
from tvm import relax

from test_pass_plan_layers import W_BINARY, W_FLOAT, Before
from tvmbits.ops.bitpack import bitpack, fill_then_pack, pack_bits
from tvmbits.ops import bitserial_conv2d as bitserial_conv2d_module
from tvmbits.ops.bitserial_conv2d import bitserial_conv2d_nhwc, border_table
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.quantize import binarize
from tvmbits.ops.window import Window
from tvmbits.passes.fold_thresholds import BINARIZE
from tvmbits.passes.fuse_packing import KERNEL, PACKING
from tvmbits.passes.lower_lowbit import LowerLowBit
from tvmbits.passes.plan_layers import PlanLayers

BIPOLAR = Encoding("bipolar", 1)


def expected(border: bool = False) -> tvm.IRModule:
    """With `border`, the 5×5 output reads its input zero-padded, written so by the packing,
    and the kernel takes the weights' border table from its own call on the weight constant."""
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 5, 5, 2), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            codes = builder.emit_te(binarize, x, primfunc_name_hint="binarize", primfunc_attrs={BINARIZE: True})
            padding = (1, 1, 1, 1) if border else (0, 0, 0, 0)
            packed = builder.emit_te(bitpack, codes, 1, padding, primfunc_name_hint="bitpack",
                                     primfunc_attrs={PACKING: True})
            if border:  # split into the zero fill and the packing of the pixels
                packing = builder.lookup_binding(packed).args[0]
                builder.update_func(packing, fill_then_pack(builder.get()[packing]))
            weight = relax.const(pack_bits(BIPOLAR.encode(np.where(W_BINARY >= 0, 1, -1)), 1))
            tables = []
            if border:
                window = Window.of((5, 5), (3, 3), (1, 1), (1, 1, 1, 1))
                tables.append(builder.emit_te(lambda w: border_table(w, 2, window), weight,
                                              primfunc_name_hint="bitserial_border"))
            acc = builder.emit_te(
                lambda d, w, *table: bitserial_conv2d_nhwc(d, w, 2, BIPOLAR, BIPOLAR, (1, 1), (1, 1, 1, 1),
                                                           **({"border": table[0], "padded_input": True}
                                                              if table else {})),
                packed, weight, *tables, primfunc_name_hint="bitserial_conv2d",
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
    after = LowerLowBit(PlanLayers()(Before))
    tvm.ir.assert_structural_equal(after, expected())


def test_a_padded_bipolar_conv_gets_its_border_table_from_the_weight_constant(monkeypatch):
    monkeypatch.setattr(bitserial_conv2d_module, "MIN_PIXELS_FOR_BORDER_TABLE", 0)  # the 5×5 output pays
    after = LowerLowBit(PlanLayers()(Before))
    tvm.ir.assert_structural_equal(after, expected(border=True))
