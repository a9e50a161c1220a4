"""Small ONNX models built in the tests (no files shipped, no downloads)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, initializers, opset=17, domains=()) -> onnx.ModelProto:
    """A checked float32 model; `domains` adds version-1 opset imports of custom op domains."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def bipolar(rng, shape, scale=None) -> np.ndarray:
    """±1 weights, times a per-output-channel power of two when `scale` is True."""
    w = np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)
    if scale:
        w *= (2.0 ** -rng.integers(0, 4, shape[0])).astype(np.float32).reshape((-1,) + (1,) * (len(shape) - 1))
    return w


def tiny_bnn(seed=0, channels=(5, 8, 12), size=9, strides=(1, 2), pads=(1, 0), scale=True, classes=10, batch=1):
    """Float stem conv → [Sign → ±s conv → Mul/Add] × 2 → Sign → ±1 Gemm (binary classifier)."""
    rng = np.random.default_rng(seed)
    c0, c1, c2 = channels
    # on a dyadic_input the stem's products are multiples of 2^-8: its bias, an odd multiple
    # of 2^-9, keeps them off 0 (the first Sign input)
    init = {
        "stem_w": (rng.integers(-4, 5, (c0, 3, 3, 3)) / 8).astype(np.float32),
        "stem_b": ((2 * rng.integers(-64, 64, c0) + 1) / 512).astype(np.float32),
    }
    nodes = [helper.make_node("Conv", ["input", "stem_w", "stem_b"], ["h0"], pads=[1, 1, 1, 1], name="stem")]
    h, cin, s = "h0", c0, size
    for i, (cout, stride, pad) in enumerate(zip((c1, c2), strides, pads)):
        init[f"w{i}"] = bipolar(rng, (cout, cin, 3, 3), scale)
        init[f"a{i}"] = (rng.integers(1, 5, (1, cout, 1, 1)) / 4).astype(np.float32)
        # conv · a is a multiple of 2^-5 (scale ≥ 2^-3, a a multiple of 2^-2); an odd multiple of
        # 2^-6 as bias keeps every Sign input off 0, where ONNX Sign gives 0 and tvmbits +1
        init[f"b{i}"] = ((2 * rng.integers(-32, 32, (1, cout, 1, 1)) + 1) / 64).astype(np.float32)
        nodes += [
            helper.make_node("Sign", [h], [f"s{i}"], name=f"sign{i}"),
            helper.make_node(
                "Conv", [f"s{i}", f"w{i}"], [f"c{i}"], strides=[stride] * 2, pads=[pad] * 4, name=f"bconv{i}"
            ),
            helper.make_node("Mul", [f"c{i}", f"a{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i + 1}"]),
        ]
        h, cin, s = f"h{i + 1}", cout, (s + 2 * pad - 3) // stride + 1
    init["fc_w"] = bipolar(rng, (classes, cin * s * s))
    nodes += [
        helper.make_node("Sign", [h], ["sf"]),
        helper.make_node("Flatten", ["sf"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w"], ["logits"], transB=1, name="fc"),
    ]
    return make_model(nodes, [("input", [batch, 3, size, size])], [("logits", [batch, classes])], init)


def residual_bnn(seed=0, channels=64, size=8):
    """Float stem conv (3 → `channels`) → Sign → ±s conv → Mul/Add → Add(stem output) = r0 → Sign →
    ±s conv stride 2 → Mul/Add → Sign → ±s conv pad 0 → Mul: three binarized layers, a residual
    add between the first two; r0 is also an output (read beside the next layer's Sign), the
    second layer's result only by the third's Sign. Exact on a `dyadic_input` as in
    `tiny_bnn`: the stem's results are odd multiples of 2^-9, each layer's Mul/Add odd multiples
    of 2^-6, so no Sign input is 0 and float32 rounds nowhere."""
    rng = np.random.default_rng(seed)
    c = channels
    init = {
        "stem_w": (rng.integers(-4, 5, (c, 3, 3, 3)) / 8).astype(np.float32),
        "stem_b": ((2 * rng.integers(-64, 64, c) + 1) / 512).astype(np.float32),
        "w2": bipolar(rng, (c, c, 3, 3), True),
    }
    nodes = [helper.make_node("Conv", ["input", "stem_w", "stem_b"], ["h0"], pads=[1, 1, 1, 1], name="stem")]
    for i, stride in ((0, 1), (1, 2)):
        init[f"w{i}"] = bipolar(rng, (c, c, 3, 3), True)
        init[f"a{i}"] = (rng.integers(1, 5, (1, c, 1, 1)) / 4).astype(np.float32)
        init[f"b{i}"] = ((2 * rng.integers(-32, 32, (1, c, 1, 1)) + 1) / 64).astype(np.float32)
        nodes += [
            helper.make_node("Sign", [f"h{i}" if i == 0 else "r0"], [f"s{i}"]),
            helper.make_node("Conv", [f"s{i}", f"w{i}"], [f"c{i}"], strides=[stride] * 2, pads=[1] * 4,
                             name=f"bconv{i}"),
            helper.make_node("Mul", [f"c{i}", f"a{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i + 1}"]),
        ]
        if i == 0:
            nodes.append(helper.make_node("Add", ["h1", "h0"], ["r0"]))
    nodes += [
        helper.make_node("Sign", ["h2"], ["s2"]),
        helper.make_node("Conv", ["s2", "w2"], ["c2"], name="bconv2"),
        helper.make_node("Mul", ["c2", "a0"], ["output"]),
    ]
    out = (size + 1) // 2 - 2
    outputs = [("output", [1, c, out, out]), ("r0", [1, c, size, size])]
    return make_model(nodes, [("input", [1, 3, size, size])], outputs, init)


def sign_conv(seed=0, channels=(8, 16), size=6):
    """Sign → ±1 3×3 conv: one binarized layer, the one kernel `tvmbits tune` finds in it."""
    rng = np.random.default_rng(seed)
    cin, cout = channels
    nodes = [helper.make_node("Sign", ["input"], ["s"]),
             helper.make_node("Conv", ["s", "w"], ["output"], pads=[1, 1, 1, 1], name="conv")]
    return make_model(nodes, [("input", [1, cin, size, size])], [("output", [1, cout, size, size])],
                      {"w": bipolar(rng, (cout, cin, 3, 3))})


def dyadic_input(shape, seed=0) -> np.ndarray:
    """Multiples of 2^-5 in [-2, 2): float convs of them with dyadic weights round nowhere."""
    return (np.random.default_rng(seed).integers(-64, 64, shape) / 32).astype(np.float32)


def float_cnn(seed=0, size=12, classes=10):
    """conv → ReLU → conv → ReLU → conv (signed inputs) → ReLU → Gemm: a float model to quantize."""
    rng = np.random.default_rng(seed)
    init = {
        "w0": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "w1": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2,
        "b1": rng.standard_normal(16).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((16, 16, 1, 1)).astype(np.float32) * 0.2,
        "w3": rng.standard_normal((classes, 16 * (size // 2) ** 2)).astype(np.float32) * 0.05,
    }
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w3"], ["logits"], transB=1, name="fc"),
    ]
    return make_model(nodes, [("input", [1, 3, size, size])], [("logits", [1, classes])], init)
