"""FoldThresholds: binarize an integer accumulator against integer thresholds.

After LowerLowBit, a binarized layer that feeds the next one through batch norm or scales
reads, in float32,

    codes = binarize(g(astype(acc, "float32")))      # binarize: 1 where its input ≥ 0

with `acc` an int32 tensor (a low-bit kernel's result) and g a chain of `multiply`, `divide`,
`add` and `subtract` by constants that are one value per output channel (the last axis) or a
scalar. Each of those float32 operations is monotone in its variable operand (a multiplier or
divisor's sign sets the direction), so per channel `codes` is 1 exactly on an interval of
int32 values, `lo ≤ acc ≤ hi`, found by binary search over all of int32 with g evaluated in
float32 as ONNX Runtime evaluates it (numpy, one rounding per operation). The call becomes
`binarize_threshold(acc, lo, hi)`, which compares integers: exact, and the float epilogue is
gone where nothing else reads it. A chain with anything else (a residual add of another
tensor, a zero or non-finite multiplier or divisor) is left as it is.
"""

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvmbits.ops.quantize import binarize_threshold

BINARIZE = "tvmbits.binarize"  # PrimFunc attribute LowerLowBit puts on its binarize functions
INT32 = np.iinfo(np.int32)
# float32 operations of g, on the variable operand x and a constant c, by which side c is on
_OPS = {
    "relax.multiply": (np.multiply, np.multiply),
    "relax.add": (np.add, np.add),
    "relax.subtract": (lambda x, c: x - c, lambda c, x: c - x),
    "relax.divide": (lambda x, c: x / c, None),  # c / x is not monotone across x = 0
}


@tvm.transform.module_pass(opt_level=0, name="tvmbits.FoldThresholds")
def FoldThresholds(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (TVM's pass naming)
    folder = _Folder(mod)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            folder.builder_.update_func(gvar, folder.visit_expr(func))
    return relax.transform.DeadCodeElimination()(folder.builder_.get())


@mutator
class _Folder(PyExprMutator):
    def __init__(self, mod):
        super().__init__(mod)
        self.mod = mod
        self.var2val = {}

    def visit_function_(self, func):
        self.var2val = relax.analysis.get_var2val(func)
        return super().visit_function_(func)

    def visit_var_binding_(self, binding):
        folded = self._fold(binding.value)
        if folded is None:
            return super().visit_var_binding_(binding)
        self.builder_.emit_normalized(relax.VarBinding(binding.var, self.builder_.normalize(folded)))

    def _fold(self, call):
        if not self._is_binarize(call):
            return None
        chain = _chain(call.args[1][0], self.var2val)
        if chain is None:
            return None
        acc, steps = chain
        channels = int(acc.ty.shape[-1])
        bounds = thresholds(steps, channels)
        if bounds is None:
            return None
        lo, hi = (relax.const(b) for b in bounds)
        return self.builder_.call_te(binarize_threshold, self.visit_expr(acc), lo, hi,
                                     primfunc_name_hint="binarize_threshold")

    def _is_binarize(self, call) -> bool:
        if not isinstance(call, relax.Call) or call.op != tvm.ir.Op.get("relax.call_tir"):
            return False
        func = self.mod[call.args[0]]
        return func.attrs is not None and bool(func.attrs.get(BINARIZE, False))


def _chain(value, var2val):
    """(acc, steps) when `value` is g(astype(acc, float32)) as the module docstring says, acc an
    int32 tensor of static shape; steps, in order from acc: (numpy op, per-channel or scalar
    float32 constant, constant first). None otherwise."""
    steps = []
    while True:
        call = var2val.get(value, value)
        if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
            return None
        name = call.op.name
        if name == "relax.astype":
            source = call.args[0]
            shape = source.ty.shape if isinstance(source.ty, relax.TensorType) else None
            if str(call.attrs.dtype) != "float32" or source.ty.dtype != "int32" or shape is None:
                return None
            if not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
                return None
            return source, steps[::-1]
        if name not in _OPS or len(call.args) != 2:
            return None
        first, second = call.args
        constant_first = isinstance(first, tvm.ir.expr.Constant)
        constant, value = (first, second) if constant_first else (second, first)
        op = _OPS[name][1 if constant_first else 0]
        if not isinstance(constant, tvm.ir.expr.Constant) or op is None or constant.ty.dtype != "float32":
            return None
        steps.append((op, constant.value.numpy(), constant_first, name))


def thresholds(steps: list, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """int64 `[channels]` (lo, hi): per channel, binarize(g(float32(acc))) is 1 exactly where
    lo ≤ acc ≤ hi (lo > hi: never; the bounds are int32 values, compared in int64 because TVM's
    simplifier moves terms across a comparison, e.g. lo ≤ n − 2m into 2m + lo ≤ n, which would
    overflow int32 at the ends of its range), for g the float32 `steps`; None when a constant
    is not one value per channel, or a multiplier or divisor is zero or not finite (g might
    then not be monotone)."""
    per_channel = []
    for op, constant, constant_first, name in steps:
        if constant.size not in (1, channels) or any(d != 1 for d in constant.shape[:-1]):
            return None
        c = np.broadcast_to(constant.reshape(-1), (channels,)).astype(np.float32)
        if name in ("relax.multiply", "relax.divide") and (not np.all(np.isfinite(c)) or np.any(c == 0)):
            return None
        per_channel.append((op, c, constant_first))

    def codes(acc: np.ndarray) -> np.ndarray:
        x = acc.astype(np.int32).astype(np.float32)
        with np.errstate(all="ignore"):
            for op, c, constant_first in per_channel:
                x = op(c, x) if constant_first else op(x, c)
        return x >= np.float32(0)

    # g monotone: per channel the codes are constant, or rise (0…0 1…1) or fall (1…1 0…0) once
    bottom, top = np.full(channels, INT32.min, np.int64), np.full(channels, INT32.max, np.int64)
    first, last = codes(bottom), codes(top)
    low, high = bottom, top  # search for the step: codes(low) == first, codes(high) == last
    while np.any(high - low > 1):
        middle = (low + high) // 2
        at_last = codes(middle) == last
        high, low = np.where(at_last, middle, high), np.where(at_last, low, middle)
    lo = np.where(first, bottom, np.where(last, high, 1))  # rising: from the step's top; never: 1 > 0
    hi = np.where(last, top, np.where(first, low, 0))      # falling: to the step's bottom
    return lo, hi
