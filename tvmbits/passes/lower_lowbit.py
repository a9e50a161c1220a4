"""LowerLowBit: replace every call of a planned layer function by its low-bit operators.

In every function of the module, a call of a layer function (`layers.py`) whose plan is
low-bit, `y = layer(x)` holding `conv2d(x, W)` (NHWC/OHWI) or `matmul(x, W)`, becomes

    codes  = binarize(z) | quantize(x, act_scale, act_zero_point)  # Sign(z) feeding it absorbed
    packed = bitpack(codes[, padding]) | subbyte_pack(codes)  # padding: the zero words a padded
                                            # bit-serial conv reads (`reads_padded_input`), on CPUs;
                                            # its PrimFunc split by `fill_then_pack`
    W      = W_packed | subbyte_unpack_weight(W_packed)  # the latter for ≤ 4-bit sub-byte weights
    acc    = <kernel>(packed, W[, offset | border])  # int32; W packed here; offset: the
                                            # sub-byte weight_offset or the bit-serial β term;
                                            # border: a padded bipolar conv's border_table(W),
                                            # its own call on the constant, folded at compile time
             − act_zero_point · Σ W            # only for a zero point; per position and channel
    y      = float32(acc) · (act_scale · weight_scale)  # per output channel, last axis

A call of a layer that stays float becomes the layer function's body again. The layer
functions, no longer called, are removed.

Under a CUDA target (run the pass inside `with target:`) the kernels are their GEMM forms
(`GEMM_FORMS`), which the CUDA schedules tensorize; the operands and results are the same.

The unpacking PrimFunc is opaque (op_pattern 8): FuseOps leaves its call alone, and
`UnpackAtLoad` moves it to the function the runtime calls once, when it loads the model.
The kernel PrimFuncs carry op_pattern 4 (out-elementwise-fusable), so TVM's FuseOps later
fuses this epilogue, and any bias, batch norm or residual add after it, into the kernel. They
are marked `KERNEL`, and the packing PrimFuncs (`bitpack`, `subbyte_pack`) `PACKING`, for
`FusePacking` to merge a layer's packing into the kernel function whose result it packs; the
binarize PrimFuncs `BINARIZE`, for `FoldThresholds`.
"""

from functools import partial

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvmbits.ops import reference
from tvmbits.ops.bitpack import bitpack, fill_then_pack, pack_bits
from tvmbits.ops.bitserial_conv2d import (bitserial_conv2d_nhwc, border_table, reads_border_table, reads_padded_input,
                                          window_offset)
from tvmbits.ops.bitserial_dense import bitserial_dense, row_offset
from tvmbits.ops.bitserial_gemm import bitserial_conv2d_gemm, bitserial_dense_gemm, weight_sums
from tvmbits.ops.bitserial_term import has_offset
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.quantize import binarize, quantize
from tvmbits.ops.subbyte import UNPACK, bias, pack_subbyte_weight, per_byte, subbyte_pack, weight_offset, weight_values
from tvmbits.ops.subbyte_conv2d import subbyte_conv2d_nhwc
from tvmbits.ops.subbyte_dense import subbyte_dense
from tvmbits.ops.subbyte_gemm import subbyte_conv2d_gemm, subbyte_dense_gemm
from tvmbits.ops.window import Window
from tvmbits.passes.fold_thresholds import BINARIZE
from tvmbits.passes.fuse_packing import KERNEL, PACKING
from tvmbits.passes.layer_plan import LayerPlan, is_planned
from tvmbits.passes.layers import is_layer_function
from tvmbits.passes.unpack_at_load import UNPACK_AT_LOAD

KERNEL_ATTRS = {"op_pattern": 4, KERNEL: True}  # out-elementwise-fusable
PACKING_ATTRS = {PACKING: True}
BINARIZE_ATTRS = {BINARIZE: True}  # for FoldThresholds
UNPACKING = {"op_pattern": 8, UNPACK_AT_LOAD: True}  # opaque: FuseOps leaves it alone
LOWBIT_KERNELS = ("bitserial", "subbyte")
# Under a CUDA target (the current `tvm.target.Target`), the same kernels in GEMM form: the
# same operands and int32 results, summed as the tensor-core MMA sums (ops/*_gemm.py).
GEMM_FORMS = {
    bitserial_conv2d_nhwc: bitserial_conv2d_gemm,
    bitserial_dense: bitserial_dense_gemm,
    subbyte_conv2d_nhwc: subbyte_conv2d_gemm,
    subbyte_dense: subbyte_dense_gemm,
}


@tvm.transform.module_pass(opt_level=0, name="tvmbits.LowerLowBit")
def LowerLowBit(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (TVM's pass naming)
    plans = {gvar: LayerPlan.of(func) for gvar, func in mod.functions.items() if is_planned(func)}
    rewriter = _Rewriter(mod, plans)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function) and not is_layer_function(func):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get())


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, plans):
        super().__init__(mod)
        self.mod = mod
        self.plans = plans

    def visit_call_(self, call):
        if not isinstance(call.op, relax.GlobalVar) or not is_layer_function(self.mod[call.op]):
            return super().visit_call_(call)
        args = [self.visit_expr(arg) for arg in call.args]
        plan = self.plans.get(call.op)
        if plan is None or plan.kernel not in LOWBIT_KERNELS:
            return self._inline(self.mod[call.op], args)
        codes = self._codes(plan, args[0])
        layer = plan.layer
        channels = layer.weight.shape[-1]
        name = f"{plan.kernel}_{layer.op}"
        conv_args = (layer.attrs["strides"], layer.attrs["padding"]) if layer.op == "conv2d" else ()
        target = tvm.target.Target.current(allow_none=True)
        gemm_form = target is not None and target.kind.name == "cuda"
        window = None
        if layer.op == "conv2d":
            window = Window.of(layer.data_shape[1:3], layer.weight.shape[1:3], *conv_args)
        values = plan.weight_values
        extra = {}  # the kernel's keyword arguments after the weight: inputs computed beforehand
        if plan.kernel == "bitserial":
            # the conv's zero-padded input written by the packing (the CUDA GEMM forms pad their own)
            padded = not gemm_form and window is not None and reads_padded_input(plan.act, plan.wgt, window)
            padding = window.padding if padded else (0, 0, 0, 0)
            packed = self.builder_.emit_te(lambda data: bitpack(data, plan.act.bits, padding), codes,
                                           primfunc_name_hint="bitpack", primfunc_attrs=PACKING_ATTRS)
            if padded:
                packing = self.builder_.lookup_binding(packed).args[0]
                self.builder_.update_func(packing, fill_then_pack(self.builder_.get()[packing]))
            inputs = [packed, relax.const(pack_bits(plan.wgt.encode(values), plan.wgt.bits))]
            kernel = bitserial_conv2d_nhwc if layer.op == "conv2d" else bitserial_dense
            sizes = (channels,)
            if gemm_form:
                kernel = GEMM_FORMS[kernel]
                extra = self._gemm_terms(plan, inputs, channels, conv_args, window)
            else:
                extra = self._bitserial_terms(plan, inputs, channels, conv_args, window, padded)
            if padded:
                kernel = partial(kernel, padded_input=True)
        else:
            packed = self.builder_.emit_te(partial(subbyte_pack, act=plan.act), codes,
                                           primfunc_name_hint="subbyte_pack", primfunc_attrs=PACKING_ATTRS)
            inputs = [packed, self._subbyte_weight(values, plan.wgt)]
            kernel = subbyte_conv2d_nhwc if layer.op == "conv2d" else subbyte_dense
            kernel = GEMM_FORMS[kernel] if gemm_form else kernel
            sizes = (channels, layer.weight.shape[0])
            if bias(plan.act):
                extra["offset"] = relax.const(weight_offset(values, plan.act))
        keys = list(extra)
        # emit_te passes only tensors and plain numbers through; bind the rest here
        acc = self.builder_.emit_te(
            lambda data, weight, *rest: kernel(data, weight, *sizes, plan.act, plan.wgt, *conv_args,
                                               **dict(zip(keys, rest))),
            *inputs, *extra.values(),
            primfunc_name_hint=name,
            primfunc_attrs=KERNEL_ATTRS,
        )
        if plan.act_zero_point:
            acc = self.builder_.emit(relax.op.subtract(acc, relax.const(_zero_point_correction(plan))))
        out = relax.op.astype(acc, "float32")
        scale = (np.float64(plan.act_scale) * plan.weight_scale).astype(np.float32)
        if np.all(scale == 1):
            return out
        return relax.op.multiply(self.builder_.emit(out), relax.const(scale))

    def _subbyte_weight(self, values: np.ndarray, wgt: Encoding) -> relax.Expr:
        """The blocked weight bytes the sub-byte kernel reads for the integer weight `values`:
        the constant itself for 5–8-bit weights; for fewer bits, the packed constant unpacked by
        its own call (`UNPACK`, opaque so that FuseOps keeps it out of the kernel, for
        UnpackAtLoad to move to load)."""
        stored = relax.const(pack_subbyte_weight(values, wgt))
        if per_byte(wgt) == 1:
            return stored
        return self.builder_.emit_te(partial(weight_values, wgt=wgt), stored,
                                     primfunc_name_hint=UNPACK, primfunc_attrs=UNPACKING)

    def _bitserial_terms(self, plan: LayerPlan, inputs: list, channels: int, conv_args: tuple,
                         window: Window | None, padded: bool) -> dict:
        """The bit-serial kernel's inputs computed beforehand, by keyword: the β term
        (`bitserial_offset`, its own function, so that FuseOps hands it to the kernel as an input
        its epilogue reads; over the zero-padded input where `padded`, whose zero words add 0)
        and the bipolar conv's border table (`bitserial_border`, a function of the constant
        weights that FoldConstant folds)."""
        packed, weight = inputs
        if has_offset(plan.act, plan.wgt):
            if padded:
                conv_args = (conv_args[0], (0, 0, 0, 0))
            return {"offset": self.builder_.emit_te(self._offset(plan, channels, conv_args), packed,
                                                    primfunc_name_hint="bitserial_offset")}
        if window is not None and reads_border_table(plan.act, plan.wgt, window):
            return {"border": self.builder_.emit_te(lambda w: border_table(w, channels, window), weight,
                                                    primfunc_name_hint="bitserial_border")}
        return {}

    @staticmethod
    def _offset(plan: LayerPlan, channels: int, conv_args: tuple):
        if plan.layer.op == "dense":
            return lambda data: row_offset(data, channels, plan.act, plan.wgt)
        kernel_size = plan.layer.weight.shape[1:3]
        return lambda data: window_offset(data, channels, plan.act, plan.wgt, kernel_size, *conv_args)

    def _gemm_terms(self, plan: LayerPlan, inputs: list, channels: int, conv_args: tuple,
                    window: Window | None) -> dict:
        """The bit-serial GEMM form's per-pixel term (`bitserial_offset`, also for bipolar ×
        bipolar) and weight term (`bitserial_weight_term`, a function of the constant weights
        that FoldConstant folds), by keyword, so that the kernel's PrimFunc holds nothing before
        its GEMM that its epilogue waits for."""
        packed, weight = inputs
        terms = {}
        if plan.wgt.offset:
            terms["offset"] = self.builder_.emit_te(self._offset(plan, channels, conv_args), packed,
                                                    primfunc_name_hint="bitserial_offset")
        if plan.act.offset:
            terms["weight_term"] = self.builder_.emit_te(lambda w: weight_sums(w, plan.act, plan.wgt, window),
                                                         weight, primfunc_name_hint="bitserial_weight_term")
        return terms

    def _inline(self, func: relax.Function, args: list) -> relax.Expr:
        """The body of a layer function on `args`: its bindings emitted here but the last, whose
        value is returned for the caller's own binding (an alias binding would keep FuseOps
        from fusing the layer with what follows)."""
        values = dict(zip(func.params, args))
        bindings = [binding for block in func.body.blocks for binding in block.bindings]
        for binding in bindings:
            call = binding.value
            new = relax.Call(call.op, [values.get(a, a) for a in call.args], call.attrs, call.ty_args)
            if binding is bindings[-1]:
                return new
            values[binding.var] = self.builder_.emit(new)
        raise ValueError(f"layer function without bindings: {func.attrs['tvmbits.layer']}")

    def _codes(self, plan: LayerPlan, data: relax.Expr) -> relax.Expr:
        """The activation codes of the layer's data, from its function's first argument (z of a
        Sign-fed layer: binarizing z is the Sign, with 0 → +1)."""
        if plan.layer.bipolar_data:
            if plan.act.kind != "bipolar":
                data = self.builder_.emit(relax.op.sign(data))
            for op in plan.layer.layout_ops:
                data = self.builder_.emit(relax.Call(op.op, [data, *op.args[1:]], op.attrs, op.ty_args))
        if plan.act.kind == "bipolar":
            return self.builder_.emit_te(binarize, data, primfunc_name_hint="binarize",
                                         primfunc_attrs=BINARIZE_ATTRS)
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
    _, height, width, channels = plan.layer.data_shape
    ones = np.ones((1, height, width, channels), np.int64)
    inside = reference.conv2d_nhwc(ones, weight, plan.layer.attrs["strides"], plan.layer.attrs["padding"])
    return (z * inside).astype(np.int32)
