"""An exact reference for whole quantized models (QONNX Quant, QDQ, Conv, Gemm, MatMul, Mul,
Add, Relu, Flatten), computed in float64 on values that are all dyadic rationals: every value
is checked to be a multiple of 2^-32 below 2^20 in magnitude, so float64 (53-bit significand)
holds it exactly, sums and products included, and each quantizer sees its input exactly:
a value on a rounding tie is on the tie, which a float32 reference cannot promise."""

import numpy as np
from onnx import numpy_helper

from tvmbits.frontend.rounding import NUMPY as ROUNDING

GRID = 2.0**-32
LIMIT = 2.0**20


def _exact(name, value):
    value = np.asarray(value, np.float64)
    scaled = value / GRID
    assert np.all(np.abs(value) < LIMIT) and np.array_equal(scaled, np.round(scaled)), (
        f"{name}: not exactly representable on the reference's grid"
    )
    return value


def _quant(x, scale, zero, bits, signed=1, narrow=0, rounding_mode="ROUND"):
    bits = int(bits)
    if signed:
        lo, hi = -(2 ** (bits - 1)) + narrow, 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1 - narrow
    y = np.clip(x / scale + zero, lo, hi)
    return (ROUNDING[rounding_mode](y) - zero) * scale


def _conv(x, w, pads=(0, 0, 0, 0), strides=(1, 1), **_):
    top, left, bottom, right = pads
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    sh, sw = strides
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    out = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = np.einsum("nchw,ochw->no", x[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw], w)
    return out


def _attrs(node):
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def run(model, feeds: dict[str, np.ndarray], before_quant: list | None = None) -> dict[str, np.ndarray]:
    """The exact outputs of `model` on `feeds`; `before_quant` (a list) collects each
    activation quantizer's input divided by its scale (ties are where this is k + 1/2)."""
    values = {init.name: numpy_helper.to_array(init).astype(np.float64) for init in model.graph.initializer}
    values.update({name: _exact(name, v) for name, v in feeds.items()})
    for node in model.graph.node:
        ins = [values[name] if name else None for name in node.input]
        a = _attrs(node)
        op = node.op_type
        if op in ("Quant", "IntQuant"):
            x, scale, zero, bits = ins
            if before_quant is not None and node.input[0] not in {i.name for i in model.graph.initializer}:
                before_quant.append(x / scale + zero)
            out = _quant(x, scale, zero, bits, a.get("signed", 1), a.get("narrow", 0),
                         a.get("rounding_mode", "ROUND"))
        elif op == "Conv":
            out = _conv(ins[0], ins[1], tuple(a.get("pads", (0, 0, 0, 0))), tuple(a.get("strides", (1, 1))))
            if len(ins) > 2:
                out = out + ins[2].reshape(1, -1, 1, 1)
        elif op == "Gemm":
            w = ins[1].T if a.get("transB") else ins[1]
            out = ins[0] @ w + (ins[2] if len(ins) > 2 else 0)
        elif op == "MatMul":
            out = ins[0] @ ins[1]
        elif op == "Mul":
            out = ins[0] * ins[1]
        elif op == "Add":
            out = ins[0] + ins[1]
        elif op == "Relu":
            out = np.maximum(ins[0], 0)
        elif op == "Flatten":
            out = ins[0].reshape(ins[0].shape[0], -1)
        else:
            raise NotImplementedError(op)
        values[node.output[0]] = _exact(node.output[0], out)
    return {output.name: values[output.name] for output in model.graph.output}
