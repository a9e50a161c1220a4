"""Rewrite planned conv2d / dense layers into the low-bit operators.

For each layer with a low-bit plan the binding `y = conv2d(x, W)` (NHWC/OHWI) or
`y = matmul(x, W)` becomes

    codes  = binarize(z) | quantize(x, act_scale, act_zero_point)  # Sign(z) feeding it absorbed
    packed = bitpack(codes) | subbyte_pack(codes)
    acc    = <kernel>(packed, W_packed[, offset])  # int32, W packed (and the sub-byte
                                                   # kernels' weight_offset summed) here
             − act_zero_point · Σ W            # only for a zero point; per position and channel
    y      = float32(acc) · (act_scale · weight_scale)  # per output channel, last axis

The kernel PrimFuncs carry op_pattern 4 (out-elementwise-fusable), so TVM's FuseOps later
fuses this epilogue, and any bias, batch norm or residual add after it, into the kernel.
"""

from functools import partial

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvmbits.ops import reference
from tvmbits.ops.bitpack import bitpack, pack_bits
from tvmbits.ops.bitserial_conv2d import bitserial_conv2d_nhwc, window_offset
from tvmbits.ops.bitserial_dense import bitserial_dense, row_offset
from tvmbits.ops.bitserial_term import has_offset
from tvmbits.ops.quantize import binarize, quantize
from tvmbits.ops.subbyte import bias, pack_subbyte_weight, subbyte_pack, weight_offset
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
        channels = layer.weight.shape[-1]
        name = f"{plan.kernel}_{layer.op}"
        conv_args = (layer.attrs["strides"], layer.attrs["padding"]) if layer.op == "conv2d" else ()
        if plan.kernel == "bitserial":
            packed = self.builder_.emit_te(bitpack, codes, plan.act.bits, primfunc_name_hint="bitpack")
            inputs = [packed, relax.const(pack_bits(plan.wgt.encode(plan.weight_values), plan.wgt.bits))]
            kernel = bitserial_conv2d_nhwc if layer.op == "conv2d" else bitserial_dense
            sizes = (channels,)
            if has_offset(plan.act, plan.wgt):
                # its own function, so that FuseOps hands it to the kernel as an input its epilogue reads
                inputs.append(self.builder_.emit_te(self._offset(plan, channels, conv_args), packed,
                                                    primfunc_name_hint="bitserial_offset"))
        else:
            packed = self.builder_.emit_te(partial(subbyte_pack, act=plan.act), codes, primfunc_name_hint="subbyte_pack")
            inputs = [packed, relax.const(pack_subbyte_weight(plan.weight_values, plan.wgt))]
            kernel = subbyte_conv2d_nhwc if layer.op == "conv2d" else subbyte_dense
            sizes = (channels, layer.weight.shape[0])
            if bias(plan.act):
                inputs.append(relax.const(weight_offset(plan.weight_values, plan.act)))
        # emit_te passes only tensors and plain numbers through; bind the rest here
        acc = self.builder_.emit_te(
            lambda data, weight, *offset: kernel(data, weight, *sizes, plan.act, plan.wgt, *conv_args, *offset),
            *inputs,
            primfunc_name_hint=name,
            primfunc_attrs=OUT_EWISE_FUSABLE,
        )
        if plan.act_zero_point:
            acc = self.builder_.emit(relax.op.subtract(acc, relax.const(_zero_point_correction(plan))))
        out = relax.op.astype(acc, "float32")
        scale = (np.float64(plan.act_scale) * plan.weight_scale).astype(np.float32)
        if np.all(scale == 1):
            return out
        return relax.op.multiply(self.builder_.emit(out), relax.const(scale))

    @staticmethod
    def _offset(plan: LayerPlan, channels: int, conv_args: tuple):
        if plan.layer.op == "dense":
            return lambda data: row_offset(data, channels, plan.act, plan.wgt)
        kernel_size = plan.layer.weight.shape[1:3]
        return lambda data: window_offset(data, channels, plan.act, plan.wgt, kernel_size, *conv_args)

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
            partial(quantize, scale=plan.act_scale, encoding=plan.act, zero_point=plan.act_zero_point),
            data,
            primfunc_name_hint="quantize",
        )


def _zero_point_correction(plan: LayerPlan) -> np.ndarray:
    """int32 z · Σ weight over the taps inside the input, per output position and channel
    ([1, OH, OW, O] for conv2d, [O] for dense): the kernel's Σ q·w minus this is Σ (q − z)·w,
    the zero padding of the real data (q = z) included."""
    z, weight = plan.act_zero_point, plan.weight_values
    if plan.layer.op == "dense":
        return (z * weight.sum(axis=1)).astype(np.int32)
    _, height, width, channels = (int(d) for d in plan.layer.call.args[0].ty.shape)
    ones = np.ones((1, height, width, channels), np.int64)
    inside = reference.conv2d_nhwc(ones, weight, plan.layer.attrs["strides"], plan.layer.attrs["padding"])
    return (z * inside).astype(np.int32)
