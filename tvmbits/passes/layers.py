"""What a layer is: the dataflow patterns that find one, and the layer function that holds it.

A layer is an ONNX Conv, Gemm or MatMul node's call in Relax (`relax.nn.conv1d/conv2d/conv3d`
or `relax.matmul`), named after its node by the frontend (`frontend/relax_import.py`).
`AnnotateLayers` wraps each into a private *layer function* whose body is the call and, when
the layer's data is `Sign(z)` seen through layout-only ops (permute_dims, reshape), the Sign
and those ops too, so that the function's parameter is z:

    @R.function(private=True)
    def layer(z: R.Tensor(...)):                      # attrs: tvmbits.layer, tvmbits.op
        s = R.sign(z); t = R.permute_dims(s) ...      # only for Sign-fed data
        y = R.nn.conv2d(t, W)                         # W a constant: NHWC/OHWI for conv2d
        return y

`PlanLayers` adds the plan (`layer_plan.py`) to the function's attributes, and `LowerLowBit`
replaces each call of a layer function by its low-bit operators, or by its body when it stays
float. `Layer.of` reads a layer function back: conv2d weights in OHWI, dense weights [O, K]
(the importer's [K, O] transposed back).
"""

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard

from tvmbits.frontend.relax_import import LAYER_CALLS

NAME = "tvmbits.layer"  # the function attribute holding the ONNX node name
OP = "tvmbits.op"  # "conv2d" | "dense" | "conv1d" | "conv3d" | "matmul" (not 2-D)
LAYOUT_OPS = ("relax.permute_dims", "relax.reshape")


def sign_pattern():
    """`Sign(z)`, then at most two layout-only ops: the data of a layer that binarizes it."""
    sign = is_op("relax.sign")(wildcard())
    once = sign | is_op("relax.permute_dims")(sign) | is_op("relax.reshape")(sign, wildcard())
    return once | is_op("relax.permute_dims")(once) | is_op("relax.reshape")(once, wildcard())


def layer_pattern():
    """A layer call on any data and any weight."""
    return _calls(wildcard(), wildcard())


def _calls(data, weight):
    pattern = None
    for op in LAYER_CALLS:
        call = is_op(op)(data, weight)
        pattern = call if pattern is None else pattern | call
    return pattern


def is_layer_function(func) -> bool:
    return isinstance(func, relax.Function) and func.attrs is not None and NAME in func.attrs


@dataclass
class Layer:
    """A layer as its layer function states it."""

    name: str
    op: str
    call: relax.Call  # the layer call in the function's body
    weight: np.ndarray | None  # float32, OHWI (conv2d) or [O, K] (dense); None if not constant
    bipolar_data: bool  # the data is Sign(z): the function's parameter is z
    layout_ops: list = field(default_factory=list)  # between the Sign and the call, in order
    attrs: dict = field(default_factory=dict)  # conv2d: strides, padding
    unsupported: str | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.call.args[0].ty.shape)

    @staticmethod
    def of(func: relax.Function) -> "Layer":
        bindings = [b for block in func.body.blocks for b in block.bindings]
        values = [b.value for b in bindings]
        call = next(v for v in values if isinstance(v, relax.Call) and v.op.name in LAYER_CALLS)
        ops = [v for v in values if isinstance(v, relax.Call) and v.op.name in ("relax.sign", *LAYOUT_OPS)]
        bipolar = bool(ops) and ops[0].op.name == "relax.sign"
        op = str(func.attrs[OP])
        weight = call.args[1].value.numpy() if isinstance(call.args[1], tvm.ir.expr.Constant) else None
        layer = Layer(str(func.attrs[NAME]), op, call, weight, bipolar, ops[1:] if bipolar else [])
        if op == "conv2d":
            _conv2d(layer)
        elif op == "dense":
            layer.weight = None if weight is None else np.ascontiguousarray(weight.T)
        else:
            layer.unsupported = _UNSUPPORTED[op]
        return _check_common(layer)


_UNSUPPORTED = {
    "conv1d": "1-D convolution: low-bit kernels take 2-D convolutions",
    "conv3d": "3-D convolution: low-bit kernels take 2-D convolutions",
    "matmul": "matmul that is not 2-D (batched or vector)",
}


def op_of(call: relax.Call) -> str:
    """The layer kind of a layer call: dense only for a 2-D data × 2-D weight matmul."""
    if call.op.name != "relax.matmul":
        return call.op.name.split(".")[-1]
    shapes = [arg.ty.shape for arg in call.args]
    return "dense" if all(s is not None and len(s) == 2 for s in shapes) else "matmul"


def _conv2d(layer: Layer) -> None:
    attrs = layer.call.attrs
    layer.attrs = {
        "strides": tuple(int(s) for s in attrs.strides),
        "padding": tuple(int(p) for p in attrs.padding),
    }
    if attrs.data_layout != "NHWC" or attrs.kernel_layout != "OHWI":
        layer.unsupported = f"layout {attrs.data_layout}/{attrs.kernel_layout}"
    elif int(attrs.groups) != 1:
        layer.unsupported = f"grouped convolution (groups={int(attrs.groups)})"
    elif any(int(d) != 1 for d in attrs.dilation):
        layer.unsupported = "dilated convolution"


def _check_common(layer: Layer) -> Layer:
    if layer.unsupported:
        return layer
    if layer.weight is None:
        layer.unsupported = "weight is not a constant"
    elif layer.weight.dtype != np.float32 or layer.call.args[0].ty.dtype != "float32":
        layer.unsupported = "not float32"
    return layer
