"""FoldFlattenTranspose: flatten NHWC data straight into a dense layer, its weight reordered.

After ToNHWC, an ONNX Flatten before a Gemm/MatMul still flattens in NCHW order, so the module
keeps a transpose there: `matmul(reshape(permute_dims(x, [0, 3, 1, 2]), [N, C·H·W]), W)` with x
NHWC. With W a constant [C·H·W, O], the same product is `matmul(reshape(x, [N, H·W·C]), W')`,
W' holding W's rows in (h, w, c) order: the data keeps its layout from the first layer to the
last, and the transpose's copy is gone. Every function of the module is rewritten.
"""

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard
from tvm.relax.expr_functor import PyExprMutator, mutator

NHWC_TO_NCHW = [0, 3, 1, 2]


def _pattern():
    data = wildcard()
    transpose = is_op("relax.permute_dims")(data)
    flatten = is_op("relax.reshape")(transpose, wildcard())
    weight = is_const()
    return data, transpose, weight, is_op("relax.matmul")(flatten, weight)


@tvm.transform.module_pass(opt_level=0, name="tvmbits.FoldFlattenTranspose")
def FoldFlattenTranspose(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (TVM's pass naming)
    folder = _Folder(mod)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            folder.builder_.update_func(gvar, folder.visit_expr(func))
    return relax.transform.DeadCodeElimination()(folder.builder_.get())


@mutator
class _Folder(PyExprMutator):
    """Rewrites the matched matmul bindings in place, keeping their variables (and so the ONNX
    layer names they carry)."""

    def __init__(self, mod):
        super().__init__(mod)
        self.data, self.transpose, self.weight, self.pattern = _pattern()
        self.var2val = {}

    def visit_function_(self, func):
        self.var2val = relax.analysis.get_var2val(func)
        return super().visit_function_(func)

    def visit_var_binding_(self, binding):
        # a Call only: the pattern also matches a variable bound to the matmul
        matched = isinstance(binding.value, relax.Call) and self.pattern.extract_matched_expr(binding.value, self.var2val)
        folded = self._fold(binding.value, matched) if matched else None
        if folded is None:
            return super().visit_var_binding_(binding)
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(folded)))

    def _fold(self, matmul, matched):
        axes = matched[self.transpose].attrs.axes
        x, w = matched[self.data], matched[self.weight].value.numpy()
        shape = x.ty.shape
        if axes is None or [int(a) for a in axes] != NHWC_TO_NCHW or shape is None or len(shape) != 4:
            return None
        if not all(isinstance(d, tvm.tirx.IntImm) for d in shape) or w.ndim != 2:
            return None
        n, h, wd, c = (int(d) for d in shape)
        if [int(d) for d in matmul.args[0].ty.shape] != [n, c * h * wd] or w.shape[0] != c * h * wd:
            return None
        reordered = w.reshape(c, h, wd, -1).transpose(1, 2, 0, 3).reshape(w.shape)
        flat = self.builder_.emit(relax.op.reshape(self.visit_expr(x), [n, h * wd * c]))
        weight = relax.const(np.ascontiguousarray(reordered))
        return relax.Call(matmul.op, [flat, weight], matmul.attrs, matmul.ty_args)
