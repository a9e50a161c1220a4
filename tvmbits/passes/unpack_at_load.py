"""UnpackAtLoad: stored sub-byte weights are unpacked once, when the model is loaded.

LowerLowBit leaves each ≤ 4-bit sub-byte weight as a call of its own on the stored constant
(2 or 4 bits a value: what the artifact keeps), `w = call_tir(subbyte_unpack_weight, (W,))`,
marked `UNPACK_AT_LOAD`. Run every call, that would unpack the same bytes on every inference.
This pass moves those bindings out of `main` into a function of their own, `PREPARE`, that
returns their results as a tuple, in the order `main` had them; `main` takes them as
parameters after the model's inputs:

    before:  main(x) { w = call_tir(unpack, (W,)); ... kernel(…, w) ... }
    after:   prepare() { return (call_tir(unpack, (W,)),) }
             main(x, w) { ... kernel(…, w) ... }

Every module gets `prepare` (an empty tuple when it has nothing to unpack), so a runtime runs
any compiled model the same way: `prepared = prepare()` once, then `main(*inputs, *prepared)`.
Folding constants must leave `prepare` alone, or it would store the unpacked bytes
(`pipeline.PrepackWeights` does).
"""

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

PREPARE = "prepare"
UNPACK_AT_LOAD = "tvmbits.unpack_at_load"  # PrimFunc attribute of the unpacking functions


@tvm.transform.module_pass(opt_level=0, name="tvmbits.UnpackAtLoad")
def UnpackAtLoad(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (TVM's pass naming)
    main_var = mod.get_global_var("main")
    main = mod[main_var]
    lifted = [
        binding
        for block in main.body.blocks
        for binding in block.bindings
        if _is_unpacking(mod, binding.value)
    ]
    params = {binding.var: relax.Var(binding.var.name, binding.var.ty) for binding in lifted}
    body = _WithoutBindings(params).visit_expr(main.body)
    new_main = relax.Function([*main.params, *params.values()], body, main.ret_ty, main.is_pure,
                              main.attrs, main.span)
    builder = relax.BlockBuilder()
    with builder.function(PREPARE, []):
        results = [builder.emit(binding.value, name_hint=binding.var.name) for binding in lifted]
        builder.emit_func_output(relax.Tuple(results))
    prepare = builder.get()[PREPARE]
    out = tvm.IRModule({**mod.functions, main_var: new_main}, attrs=mod.attrs)
    out[PREPARE] = prepare
    return out


def _is_unpacking(mod: tvm.IRModule, value: relax.Expr) -> bool:
    """Whether `value` is a call of an `UNPACK_AT_LOAD` PrimFunc on constants only."""
    if not (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.call_tir")):
        return False
    callee = mod[value.args[0]]
    return (
        isinstance(callee, tvm.tirx.PrimFunc) and callee.attrs is not None
        and bool(callee.attrs.get(UNPACK_AT_LOAD, False))
        and all(isinstance(arg, tvm.ir.expr.Constant) for arg in value.args[1].fields)
    )


@mutator
class _WithoutBindings(PyExprMutator):
    """Drops the bindings of `params`' keys; their uses become the parameters."""

    def __init__(self, params: dict):
        super().__init__()
        self.params = params

    def visit_var_binding_(self, binding):
        if binding.var not in self.params:
            super().visit_var_binding_(binding)

    def visit_var_(self, var):
        return self.params.get(var, var)

    def visit_dataflow_var_(self, var):
        return self.params.get(var, var)
