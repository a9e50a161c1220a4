"""AnnotateLayers: wrap every named layer call of every function into a layer function.

A binding `y = conv2d(x, W)` (or conv1d, conv3d, matmul) whose variable carries an ONNX node
name (`frontend/relax_import.py`) becomes `y = layer_fn(z)`, with `layer_fn` a new private
function holding the call, the `Sign` and layout ops that feed it when its data is `Sign(z)`
(`layers.sign_pattern`), and the attributes `tvmbits.layer` (the node name) and `tvmbits.op`.
TVM's ConvertLayout moves a layer's variable name onto the transpose it adds after the call at
a layout edge (`onnx__stem = permute_dims(conv2d(...))`): the name is found there too. A Sign
shared with other consumers stays for them; the layer function has its own copy.

With `expected` (the frontend's layer names), a layer the module does not hold under its name
is a ModelError, so that no layer silently runs float.
"""

import re

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from tvmbits.errors import ModelError
from tvmbits.frontend.relax_import import is_layer_call, layer_name
from tvmbits.passes.layers import LAYOUT_OPS, NAME, OP, is_layer_function, layer_pattern, op_of, sign_pattern


def AnnotateLayers(expected: list[str] | None = None) -> tvm.transform.Pass:  # noqa: N802 (TVM's pass naming)
    """The pass; `expected` lists the layer names that must all be found."""

    @tvm.transform.module_pass(opt_level=0, name="tvmbits.AnnotateLayers")
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        annotator = _Annotator(mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function) and not is_layer_function(func):
                annotator.names = _layer_names(func)
                annotator.builder_.update_func(gvar, annotator.visit_expr(func))
        missing = [name for name in expected or [] if name not in annotator.found]
        if missing:
            raise ModelError(
                f"layer '{missing[0]}' was not found in the module TVM's ONNX importer made "
                f"({len(missing)} of {len(expected)} layers missing)"
            )
        return annotator.builder_.get()

    return transform


def _layer_names(func: relax.Function) -> dict[relax.Var, str]:
    """Layer call variable → ONNX name, from its own name or that of a transpose of it."""
    var2val = relax.analysis.get_var2val(func)
    names = {}
    for var, value in var2val.items():
        name = layer_name(var)
        if name is None:
            continue
        if is_layer_call(value):
            names[var] = name
        elif isinstance(value, relax.Call) and value.op.name in LAYOUT_OPS and isinstance(value.args[0], relax.Var):
            source = value.args[0]
            if is_layer_call(var2val.get(source)) and layer_name(source) is None:
                names[source] = name
    return names


@mutator
class _Annotator(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.names: dict[relax.Var, str] = {}
        self.found: set[str] = set()
        self.var2val: dict = {}
        self.pattern = layer_pattern()
        self.data_pattern = sign_pattern()

    def visit_function_(self, func):
        self.var2val = relax.analysis.get_var2val(func)
        return super().visit_function_(func)

    def visit_var_binding_(self, binding):
        name = self.names.get(binding.var)
        if name is None or not self.pattern.match(binding.value):
            return super().visit_var_binding_(binding)
        call = binding.value
        chain = self._sign_chain(call.args[0])
        source = chain[-1].args[0] if chain else call.args[0]
        args = [source] + ([] if isinstance(call.args[1], tvm.ir.expr.Constant) else [call.args[1]])
        func = _layer_function(name, op_of(call), call, chain[::-1], args)
        gvar = self.builder_.add_func(func, "layer_" + re.sub(r"\W", "_", name))
        self.found.add(name)
        new = self.builder_.normalize(relax.Call(gvar, [self.visit_expr(arg) for arg in args]))
        self.builder_.emit_normalized(relax.VarBinding(binding.var, new))

    def _sign_chain(self, data) -> list[relax.Call]:
        """The layout ops and the Sign between `data` and z, outermost first; [] if not Sign-fed."""
        if not self.data_pattern.match(data, self.var2val):
            return []
        chain = []
        while True:
            value = self.var2val[data]
            chain.append(value)
            if value.op.name == "relax.sign":
                return chain
            data = value.args[0]


def _layer_function(name: str, op: str, call: relax.Call, chain: list[relax.Call], args) -> relax.Function:
    """A private function of `args` computing `call` (after `chain`: the Sign, then layout ops)."""
    builder = relax.BlockBuilder()
    params = [relax.Var(role, arg.ty) for role, arg in zip(("data", "weight"), args)]
    with builder.function("layer", params, attrs={NAME: name, OP: op}, private=True):
        with builder.dataflow():
            data = params[0]
            for step in chain:
                data = builder.emit(relax.Call(step.op, [data, *step.args[1:]], step.attrs, step.ty_args))
            weight = params[1] if len(params) > 1 else call.args[1]
            out = builder.emit_output(relax.Call(call.op, [data, weight], call.attrs, call.ty_args))
        builder.emit_func_output(out)
    return builder.get()["layer"]
