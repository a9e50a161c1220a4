"""Rewrite planned conv2d / dense layers into the low-bit operators.

For each layer with a low-bit plan the binding `y = conv2d(x, W)` (NHWC/OHWI) or
`y = matmul(x, W)` becomes

    codes  = binarize(z) | quantize(x, act_scale)      # Sign(z) feeding the layer is absorbed
    packed = bitpack(codes) | subbyte_pack(codes)
    acc    = <kernel>(packed, W_packed)                 # int32, W packed here at compile time
    y      = float32(acc) · (act_scale · weight_scale)  # per output channel, last axis

The kernel PrimFuncs carry op_pattern 4 (out-elementwise-fusable), so TVM's FuseOps later
fuses this epilogue, and any bias, batch norm or residual add after it, into the kernel.
"""

from functools import partial

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvmbits.ops.bitpack import bitpack, pack_bits
from tvmbits.ops.bitserial_conv2d import bitserial_conv2d_nhwc
from tvmbits.ops.bitserial_dense import bitserial_dense
from tvmbits.ops.quantize import binarize, quantize
from tvmbits.ops.subbyte import pack_subbyte, subbyte_pack
from tvmbits.ops.subbyte_conv2d import subbyte_conv2d_nhwc
from tvmbits.ops.subbyte_dense import subbyte_dense
from tvmbits.passes.layer_plan import LayerPlan

OUT_EWISE_FUSABLE = {"op_pattern": 4}


def lower_lowbit(plans: list[LayerPlan]) -> tvm.transform.Pass:
    """The pass that lowers every non-float plan of `plans` (planned on the same module)."""
    by_call = {plan.layer.call: plan for plan in plans if plan.kernel != "float"}

    @tvm.transform.module_pass(opt_level=0, name="LowerLowBit")
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _Rewriter(mod, by_call)
        main = mod.get_global_var("main")
        rewriter.builder_.update_func(main, rewriter.visit_expr(mod["main"]))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())

    return transform


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, by_call):
        super().__init__(mod)
        self.by_call = by_call

    def visit_call_(self, call):
        plan = self.by_call.get(call)
        if plan is None:
            return super().visit_call_(call)
        codes = self._codes(plan)
        layer = plan.layer
        weight_codes = plan.wgt.encode(plan.weight_values)
        channels = layer.weight.shape[-1]
        name = f"{plan.kernel}_{layer.op}"
        if plan.kernel == "bitserial":
            packed = self.builder_.emit_te(bitpack, codes, plan.act.bits, primfunc_name_hint="bitpack")
            weight = relax.const(pack_bits(weight_codes, plan.wgt.bits))
            kernel = bitserial_conv2d_nhwc if layer.op == "conv2d" else bitserial_dense
        else:
            packed = self.builder_.emit_te(
                subbyte_pack, codes, plan.act.bits, primfunc_name_hint="subbyte_pack"
            )
            weight = relax.const(pack_subbyte(weight_codes, plan.wgt.bits))
            kernel = subbyte_conv2d_nhwc if layer.op == "conv2d" else subbyte_dense
        conv_args = (layer.attrs["strides"], layer.attrs["padding"]) if layer.op == "conv2d" else ()
        # emit_te passes only tensors and plain numbers through; bind the rest here
        acc = self.builder_.emit_te(
            lambda data, weight: kernel(data, weight, channels, plan.act, plan.wgt, *conv_args),
            packed,
            weight,
            primfunc_name_hint=name,
            primfunc_attrs=OUT_EWISE_FUSABLE,
        )
        out = relax.op.astype(acc, "float32")
        scale = (np.float64(plan.act_scale) * plan.weight_scale).astype(np.float32)
        if np.all(scale == 1):
            return out
        return relax.op.multiply(self.builder_.emit(out), relax.const(scale))

    def _codes(self, plan: LayerPlan) -> relax.Expr:
        if plan.layer.sign_of is not None and plan.act.kind == "bipolar":
            source, layout_ops = plan.layer.sign_of
            data = self.visit_expr(source)
            for op in layout_ops:
                data = self.builder_.emit(relax.Call(op.op, [data, *op.args[1:]], op.attrs))
            return self.builder_.emit_te(binarize, data, primfunc_name_hint="binarize")
        data = self.visit_expr(plan.layer.call.args[0])
        if plan.act.kind == "bipolar":
            return self.builder_.emit_te(binarize, data, primfunc_name_hint="binarize")
        return self.builder_.emit_te(
            partial(quantize, scale=plan.act_scale, encoding=plan.act), data, primfunc_name_hint="quantize"
        )
