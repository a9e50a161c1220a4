"""TVM's ONNX importer, with each layer's Relax call named after its ONNX node.

Every Conv, Gemm and MatMul node's conv1d/conv2d/conv3d/matmul call is bound to a variable
named `LAYER_PREFIX + encode(<node name>)` (`graph_edit.node_name`; `encode` writes every
character but ASCII letters and digits as `_<hex code>_`, since Relax rewrites some characters
of variable names, and makes it a valid identifier), so the passes find a layer's ONNX
name in the IR itself instead of pairing calls with nodes by position: a layer the passes do
not lower (a 1-D convolution) cannot shift the names of those after it. The rest of the import
is TVM's own (`tvm.relax.frontend.onnx`).
"""

import re

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from tvmbits.frontend.graph_edit import LAYER_OPS

LAYER_PREFIX = "onnx__"
LAYER_CALLS = ("relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d", "relax.matmul")


def encode(name: str) -> str:
    """`name` in ASCII letters, digits and `_` alone: "stem.conv" → "stem_2e_conv"."""
    return "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):x}_" for c in name)


def decode(text: str) -> str:
    return re.sub(r"_([0-9a-f]+)_", lambda m: chr(int(m.group(1), 16)), text)


def layer_name(var: relax.Var) -> str | None:
    """The ONNX node name a layer variable carries, or None."""
    name = var.name
    return decode(name[len(LAYER_PREFIX):]) if name.startswith(LAYER_PREFIX) else None


def is_layer_call(expr) -> bool:
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in LAYER_CALLS


class _NamingImporter(onnx_frontend.ONNXGraphImporter):
    """The ONNX graph importer, binding each layer node's layer call to a named variable."""

    def _convert_operator(self, op_name, inputs, attrs, opset):
        expr = super()._convert_operator(op_name, inputs, attrs, opset)
        if op_name not in LAYER_OPS:
            return expr
        name = attrs["tvm_custom"]["name"]
        named = []

        def bind(e):
            """`e` with its first layer call re-bound by name (the converter may have emitted the
            call itself and returned an expression over its variable)."""
            value = self.bb.lookup_binding(e) if isinstance(e, relax.Var) else e
            if is_layer_call(value) and not named:
                # a new call, not the bound one: emitting that would bind an alias of its variable,
                # which ConvertLayout keeps in the original layout (transposes around a conv with
                # a bias); the converter's own binding is left unused, for DCE
                call = relax.Call(value.op, value.args, value.attrs, value.ty_args)
                named.append(self.bb.emit(call, name_hint=LAYER_PREFIX + encode(name)))
                return named[0]
            if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op):
                return relax.Call(e.op, [bind(a) for a in e.args], e.attrs, e.ty_args)
            return e

        return bind(expr)


def from_onnx(model, shape_dict, dtype_dict) -> tvm.IRModule:
    """`tvm.relax.frontend.onnx.from_onnx(model, shape_dict, dtype_dict)` with constants bound,
    input names kept, and layer calls named. Every layer node must have a unique name
    (`onnx.name_layers`)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = _NamingImporter(shape_dict, dtype_dict, keep_params_in_input=False, sanitize=False)
    return relax.transform.DeadCodeElimination()(importer.from_onnx(model.graph, opset))
