"""Find the convolution and dense layers of an imported, NHWC-converted Relax module.

A layer is a `relax.nn.conv2d` (data NHWC, kernel OHWI) or a 2-D `relax.matmul` by a constant,
in binding order, named after its ONNX node. `weight` is the constant in the kernel's own
layout: OHWI for conv2d, [O, K] for dense (the importer's [K, O] transposed back).
`sign_of` is set when the layer's data is `Sign(z)` seen through layout-only ops
(permute_dims, reshape): it holds z and those ops, innermost first, so the data can be
rebuilt from z without the Sign.
"""

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

LAYOUT_OPS = ("relax.permute_dims", "relax.reshape")


@dataclass
class Layer:
    name: str
    op: str
    var: relax.Var
    call: relax.Call
    weight: np.ndarray | None
    sign_of: tuple[relax.Expr, list[relax.Call]] | None
    unsupported: str | None = None
    attrs: dict = field(default_factory=dict)


def find_layers(func: relax.Function, names: list[str]) -> list[Layer]:
    """The conv2d/dense bindings of `func` in order; `names` are their ONNX node names."""
    var2val = relax.analysis.get_var2val(func)
    layers = []
    for block in func.body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
                continue
            if value.op.name == "relax.nn.conv2d":
                layers.append(_conv2d(binding.var, value, var2val))
            elif value.op.name == "relax.matmul":
                layers.append(_dense(binding.var, value, var2val))
    if len(layers) == len(names):
        for layer, name in zip(layers, names):
            layer.name = name
    return layers


def _conv2d(var, call, var2val) -> Layer:
    attrs = call.attrs
    layer = Layer(
        name=var.name,
        op="conv2d",
        var=var,
        call=call,
        weight=_constant(call.args[1]),
        sign_of=_sign_source(call.args[0], var2val),
        attrs={
            "strides": tuple(int(s) for s in attrs.strides),
            "padding": tuple(int(p) for p in attrs.padding),
        },
    )
    if attrs.data_layout != "NHWC" or attrs.kernel_layout != "OHWI":
        layer.unsupported = f"layout {attrs.data_layout}/{attrs.kernel_layout}"
    elif int(attrs.groups) != 1:
        layer.unsupported = f"grouped convolution (groups={int(attrs.groups)})"
    elif any(int(d) != 1 for d in attrs.dilation):
        layer.unsupported = "dilated convolution"
    return _check_common(layer)


def _dense(var, call, var2val) -> Layer:
    weight = _constant(call.args[1])
    layer = Layer(
        name=var.name,
        op="dense",
        var=var,
        call=call,
        weight=None if weight is None else np.ascontiguousarray(weight.T),
        sign_of=_sign_source(call.args[0], var2val),
    )
    if len(call.args[0].ty.shape) != 2 or (weight is not None and weight.ndim != 2):
        layer.unsupported = "matmul that is not 2-D (batched or vector)"
    return _check_common(layer)


def _check_common(layer: Layer) -> Layer:
    if layer.unsupported:
        return layer
    if layer.weight is None:
        layer.unsupported = "weight is not a constant"
    elif layer.weight.dtype != np.float32 or layer.call.args[0].ty.dtype != "float32":
        layer.unsupported = "not float32"
    return layer


def _constant(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def _sign_source(expr, var2val):
    chain = []
    while isinstance(expr, relax.Var) and expr in var2val:
        value = var2val[expr]
        if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
            return None
        if value.op.name == "relax.sign":
            return value.args[0], chain[::-1]
        if value.op.name not in LAYOUT_OPS:
            return None
        chain.append(value)
        expr = value.args[0]
    return None
