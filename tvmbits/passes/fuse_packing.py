"""FusePacking: a low-bit kernel's fused function also packs its result for the next layer.

Runs between TVM's FuseOps and FuseTIR (`pipeline.Fuse`). FuseOps puts a low-bit kernel and
its epilogue (scales, batch norm, residual add: elementwise ops) into one function, but not the
packing of that result for the next low-bit layer (binarize or quantize, then `bitpack` or
`subbyte_pack`): packing gathers 32 channels into a word, which FuseOps does not fuse after an
out-elementwise-fusable kernel. Then the float result goes to memory and is read back by the
packing. This pass merges, in every Relax function, each call of a packing function (its
callee calls a PrimFunc marked `PACKING`) on the result of a kernel function (its callee calls
a PrimFunc marked `KERNEL`) into one function that returns the packed codes:

    before:  y = fused_kernel(x, w, …)        p = fused_binarize_bitpack(y)
    after:   t = fused_kernel_binarize_bitpack(x, w, …)   y = t[0]   p = t[1]

The float result stays an output (`t[0]`) only when something else reads it (Bi-Real's
residual stream); otherwise the merged function returns the packed codes alone and the float
result lives only inside it, so the schedule (`schedules/cpu.py`) can binarize or quantize the
accumulators as they are written back. A kernel result packed by several consumers is merged
with the first; the others keep reading the float result. A packing op FuseOps left alone, a
plain call_tir (its Sign already fused into the kernel's function), merges the same way.
Results are unchanged: the merged function runs the same PrimFuncs on the same values.
"""

from typing import NamedTuple

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

KERNEL = "tvmbits.kernel"  # PrimFunc attribute of the low-bit kernels (LowerLowBit)
PACKING = "tvmbits.packing"  # PrimFunc attribute of bitpack and subbyte_pack (LowerLowBit)
CALL_TIR = tvm.ir.Op.get("relax.call_tir")


@tvm.transform.module_pass(opt_level=0, name="tvmbits.FusePacking")
def FusePacking(mod: tvm.IRModule, _ctx) -> tvm.IRModule:  # noqa: N802 (TVM's pass naming)
    merged: dict[tuple, relax.GlobalVar] = {}  # (kernel, packing, data index, keeps float) -> merged
    builder = relax.BlockBuilder(mod)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function) and not _is_primitive(func):
            builder.update_func(gvar, builder.normalize(_fuse_in(func, mod, builder, merged)))
    return relax.transform.DeadCodeElimination()(builder.get())


def _fuse_in(func: relax.Function, mod: tvm.IRModule, builder: relax.BlockBuilder, merged: dict
             ) -> relax.Function:
    """`func` with each packing call on a kernel call's result merged into the kernel call."""
    blocks = []
    uses = _use_counts(func)
    for block in func.body.blocks:
        if not isinstance(block, relax.DataflowBlock):
            blocks.append(block)
            continue
        position = {binding.var: i for i, binding in enumerate(block.bindings)}
        replace: dict[int, list[relax.VarBinding]] = {}  # kernel binding index -> its bindings
        dropped: set[int] = set()
        for i, binding in enumerate(block.bindings):
            pack = _callee(mod, binding.value, PACKING)
            if pack is None:
                continue
            data_index, data = next(((j, a) for j, a in enumerate(pack.args)
                                     if isinstance(a, relax.Var) and a in position), (None, None))
            if data is None:
                continue
            k = position[data]
            kernel = _callee(mod, block.bindings[k].value, KERNEL)
            others = [a for j, a in enumerate(pack.args) if j != data_index]
            if (kernel is None or k in replace or k in dropped
                    or any(isinstance(a, relax.Var) and position.get(a, -1) > k for a in others)):
                continue
            keep = uses[data] > 1 or not isinstance(data, relax.DataflowVar)
            key = (kernel.name, pack.name, data_index, keep)
            if key not in merged:
                merged[key] = _add_merged(builder, kernel, pack, data_index, keep)
            call = relax.Call(merged[key], [*kernel.args, *others])
            if keep:
                pair = relax.DataflowVar(f"{data.name}_packed", builder.get()[merged[key]].ret_ty)
                replace[k] = [relax.VarBinding(pair, call),
                              relax.VarBinding(data, relax.TupleGetItem(pair, 0)),
                              relax.VarBinding(binding.var, relax.TupleGetItem(pair, 1))]
            else:
                replace[k] = [relax.VarBinding(binding.var, call)]
            dropped.add(i)
        bindings = []
        for i, binding in enumerate(block.bindings):
            if i not in dropped:
                bindings.extend(replace.get(i, [binding]))
        blocks.append(relax.DataflowBlock(bindings))
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs, func.span)


def _add_merged(builder: relax.BlockBuilder, kernel: "_Callee", packing: "_Callee", data_index: int,
                keep: bool) -> relax.GlobalVar:
    """Add to `builder`'s module the function that runs `kernel`'s bindings, then `packing`'s on
    their result (its argument `data_index`), returning (result, packed) with `keep`, else packed
    alone; its parameters are `kernel`'s, then `packing`'s others."""
    first, second = kernel.func, packing.func
    params = [relax.Var(param.name, param.ty) for param in first.params]
    others = [relax.Var(param.name, param.ty) for j, param in enumerate(second.params) if j != data_index]
    names = dict(zip(first.params, params))
    taken = {gvar.name_hint for gvar in builder.get().get_global_vars()}
    name = f"{kernel.name}_{packing.name.removeprefix('fused_')}"
    name = next(f"{name}{i or ''}" for i in range(len(taken) + 1) if f"{name}{i or ''}" not in taken)
    with builder.function(name, [*params, *others], first.attrs, private=True):
        with builder.dataflow():
            result = _emit_bindings(builder, first, names, output=keep)
            rest = iter(others)
            names.update({param: result if j == data_index else next(rest) for j, param in enumerate(second.params)})
            packed = _emit_bindings(builder, second, names, output=True)
        builder.emit_func_output(relax.Tuple([result, packed]) if keep else packed)
    return builder.get().get_global_var(name)


def _emit_bindings(builder: relax.BlockBuilder, func: relax.Function, names: dict, output: bool) -> relax.Var:
    """Emit the bindings of `func` (one dataflow block) with its variables renamed by `names`
    (extended in place); the last one as an output of the block if `output`. Returns it."""
    rename = _Rename(names)
    bindings = list(func.body.blocks[0].bindings)
    for i, binding in enumerate(bindings):
        value = rename.visit_expr(binding.value)
        emit = builder.emit_output if output and i == len(bindings) - 1 else builder.emit
        names[binding.var] = emit(value, name_hint=binding.var.name)
    return names[func.body.body]


@mutator
class _Rename(PyExprMutator):
    def __init__(self, names: dict):
        super().__init__()
        self.names = names

    def visit_var_(self, var):
        return self.names.get(var, var)

    def visit_dataflow_var_(self, var):
        return self.names.get(var, var)


class _Callee(NamedTuple):
    """A call of a primitive function: its name, the function, the call's arguments."""

    name: str
    func: relax.Function
    args: list


def _callee(mod: tvm.IRModule, value: relax.Expr, role: str) -> _Callee | None:
    """The call `value` of a primitive Relax function one of whose PrimFuncs carries `role`; a
    call_tir of such a PrimFunc (FuseOps leaves a lone packing op unwrapped) as the call of a
    primitive function making that one call."""
    if not isinstance(value, relax.Call):
        return None
    if value.op.same_as(CALL_TIR):
        if not _has_role(mod[value.args[0]], role):
            return None
        args = list(value.args[1].fields)
        params = [relax.Var(f"a{i}", arg.ty) for i, arg in enumerate(args)]
        builder = relax.BlockBuilder()
        with builder.function("lone", params, {"Primitive": True}, private=True):
            with builder.dataflow():
                out = builder.emit_output(relax.call_tir(value.args[0], params, value.ty))
            builder.emit_func_output(out)
        return _Callee(value.args[0].name_hint, builder.get()["lone"], args)
    if not isinstance(value.op, relax.GlobalVar):
        return None
    func = mod[value.op]
    if not isinstance(func, relax.Function) or not _is_primitive(func) or len(func.body.blocks) != 1:
        return None
    for binding in func.body.blocks[0].bindings:
        call = binding.value
        if isinstance(call, relax.Call) and call.op.same_as(CALL_TIR) and _has_role(mod[call.args[0]], role):
            return _Callee(value.op.name_hint, func, list(value.args))
    return None


def _has_role(prim: tvm.tirx.PrimFunc, role: str) -> bool:
    return prim.attrs is not None and bool(prim.attrs.get(role, False))


def _is_primitive(func: relax.Function) -> bool:
    return func.attrs is not None and bool(func.attrs.get("Primitive", False))


def _use_counts(func: relax.Function) -> dict:
    counts: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts
