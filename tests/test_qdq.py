"""QDQ models (QuantizeLinear/DequantizeLinear) compile to low-bit kernels and equal ONNX
Runtime, which executes the Q/DQ nodes as the ONNX spec says (graph optimizations off, so it
does not fuse them into its own integer kernels): ONNX Runtime's `quantize_static` output with
int4 weights, and hand-built INT2/UINT2/UINT4 models."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from compiled import compile_file, run_local
from lowbit_kernels import KERNEL_2x2
from onnx_models import float_cnn
from tvmbits.compiler import CompileOptions
from tvmbits.errors import UserError
from tvmbits.ops import reference

SHAPE = (1, 3, 12, 12)


def onnxruntime(model, x, outputs=None):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(outputs, {"input": x})


class _Samples(CalibrationDataReader):
    def __init__(self):
        self.samples = iter([{"input": sample(seed)} for seed in range(4)])

    def get_next(self):
        return next(self.samples, None)


def sample(seed):
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def ort_quantized(tmp_path, opset, **options):
    """float_cnn at `opset`, quantized by ONNX Runtime's static quantizer (QDQ format)."""
    model = float_cnn()
    model.opset_import[0].version = opset
    model.ir_version = 10
    onnx.save(model, tmp_path / "float.onnx")
    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), _Samples(), quant_format=QuantFormat.QDQ, **options)
    return onnx.load(tmp_path / "qdq.onnx")


INT4_WEIGHTS = dict(
    weight_type=QuantType.QInt4,
    activation_type=QuantType.QInt8,
    per_channel=True,
    extra_options={"ActivationSymmetric": True},
)


@pytest.mark.parametrize("opset", [17, 21], ids=["com.microsoft-int4", "opset21-int4"])
def test_ort_static_int4_model_equals_onnxruntime(tmp_path, opset):
    model = ort_quantized(tmp_path, opset, **INT4_WEIGHTS)
    int4 = [i for i in model.graph.initializer if i.data_type == TensorProto.INT4]
    assert len(int4) >= 4  # the four weights (and their zero points) really are INT4
    meta = compile_file(tmp_path / "qdq.onnx", tmp_path / "qdq.tar", CompileOptions())
    rows = [(l["kernel"], l["origin"], l["activation"], l["weight"]) for l in meta["layers"]]
    assert rows == [("subbyte", "qdq", "signed8", "signed4")] * 4
    for seed in range(10, 14):
        x = sample(seed)
        out, _ = run_local(tmp_path / "qdq.tar", x)
        expected = onnxruntime(model, x)[0]
        # the logits pass a last Q/DQ: float32 round-off before it could move one step at most
        step = float(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "logits_scale")))
        np.testing.assert_allclose(out, expected, rtol=0, atol=step * 1.01)
        assert (out != expected).mean() < 0.1 and out.argmax() == expected.argmax()


UINT8_ACTIVATIONS = dict(activation_type=QuantType.QUInt8, per_channel=True)


@pytest.mark.parametrize(
    "options,codes_range,conv0",
    [(INT4_WEIGHTS, (-128, 127), "c0"), (UINT8_ACTIVATIONS, (0, 255), "r0")],
    ids=["int8-symmetric", "uint8-zero-point"],
)
def test_integer_accumulation_of_the_first_conv_is_exact(tmp_path, options, codes_range, conv0):
    """conv0's output (an extra graph output; with uint8 activations ONNX Runtime drops the
    ReLU after it and names it r0) / (s_x · s_w) is the int64 reference conv of the input's
    values q − z and the weight codes, zero padding included."""
    model = ort_quantized(tmp_path, 21, **options)
    model.graph.output.append(helper.make_tensor_value_info(conv0, TensorProto.FLOAT, [1, 8, 12, 12]))
    onnx.save(model, tmp_path / "probe.onnx")
    meta = compile_file(tmp_path / "probe.onnx", tmp_path / "probe.tar", CompileOptions())
    assert meta["layers"][0]["kernel"] == "subbyte"
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    s_x, z_x, s_w = init["input_scale"], int(init["input_zero_point"]), init["w0_scale"]
    assert (z_x != 0) == (codes_range[0] == 0)  # the uint8 case really has a zero point
    assert meta["layers"][0]["activation_zero_point"] == (z_x or None)
    weights = init["w0_quantized"].astype(np.int64)
    for seed in range(2):
        x = sample(seed)
        (_, c0), _ = run_local(tmp_path / "probe.tar", x)
        values = np.clip(np.rint(x / s_x) + z_x, *codes_range).astype(np.int64) - z_x
        expected = reference.conv2d_nhwc(values.transpose(0, 2, 3, 1), weights.transpose(0, 2, 3, 1), (1, 1), (1,) * 4)
        accumulation = c0 / (np.float64(s_x) * s_w.astype(np.float64)).reshape(1, -1, 1, 1)
        # float32(acc) · float32(s_x · s_w) is acc up to a relative 2^-22
        assert np.all(np.abs(accumulation - np.rint(accumulation)) <= 1e-3 + 5e-7 * np.abs(accumulation))
        np.testing.assert_array_equal(np.rint(accumulation).astype(np.int64), expected.transpose(0, 3, 1, 2))
        np.testing.assert_allclose(c0, onnxruntime(model, x, [conv0])[0], rtol=1e-5, atol=1e-5)


def test_asymmetric_uint8_activations_lower_with_their_zero_points(tmp_path):
    """quantize_static with uint8 activations (zero points from the calibrated ranges) and
    per-tensor int8 weights."""
    model = ort_quantized(tmp_path, 17, activation_type=QuantType.QUInt8, per_channel=False)
    meta = compile_file(tmp_path / "qdq.onnx", tmp_path / "qdq.tar", CompileOptions())
    assert [(l["kernel"], l["activation"], l["weight"]) for l in meta["layers"]] == [("subbyte", "unsigned8", "signed8")] * 4
    assert meta["layers"][0]["activation_zero_point"] and "zero point" in meta["layers"][0]["found"]["activation"]
    step = float(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "logits_scale")))
    for seed in range(20, 23):
        x = sample(seed)
        out, _ = run_local(tmp_path / "qdq.tar", x)
        expected = onnxruntime(model, x)[0]
        np.testing.assert_allclose(out, expected, rtol=0, atol=step * 1.01)
        assert out.argmax() == expected.argmax()


def two_bit_model(act_type, weight_type, weight_values, opset):
    """Q→DQ of the input (zero point 0 of `act_type`), Conv by DequantizeLinear(weights) per
    output channel, ReLU, Q→DQ, then a MatMul by per-tensor weights."""
    rng = np.random.default_rng(3)
    conv_w = rng.choice(weight_values, (4, 3, 3, 3))
    fc_w = rng.choice(weight_values, (4 * 4 * 4, 5))
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["d", "wd"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s2", "z"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s2", "z"], ["d2"]),
        helper.make_node("Flatten", ["d2"], ["flat"]),
        helper.make_node("DequantizeLinear", ["fw", "fs"], ["fwd"]),
        helper.make_node("MatMul", ["flat", "fwd"], ["out"], name="fc"),
    ]
    init = [
        numpy_helper.from_array(np.float32(0.5), "s"),
        numpy_helper.from_array(np.float32(2.0), "s2"),
        helper.make_tensor("z", act_type, [], [0]),
        helper.make_tensor("w", weight_type, conv_w.shape, conv_w.ravel().tolist()),
        numpy_helper.from_array(np.array([0.5, 0.25, 1.0, 0.75], np.float32), "ws"),
        helper.make_tensor("wz", weight_type, [4], [0] * 4),
        helper.make_tensor("fw", weight_type, fc_w.shape, fc_w.ravel().tolist()),
        numpy_helper.from_array(np.float32(0.125), "fs"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=11)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize(
    "act_type,weight_type,values,opset,kernel,act,wgt",
    [
        (TensorProto.UINT2, TensorProto.INT2, [-2, -1, 0, 1], 25, KERNEL_2x2, "unsigned2", "signed2"),
        (TensorProto.UINT4, TensorProto.UINT2, [0, 1, 2, 3], 25, "subbyte", "unsigned4", "unsigned2"),
        (TensorProto.INT4, TensorProto.INT4, list(range(-8, 8)), 21, "subbyte", "signed4", "signed4"),
    ],
    ids=["uint2xint2", "uint4xuint2", "int4xint4"],
)
def test_sub_byte_types_equal_onnxruntime(tmp_path, act_type, weight_type, values, opset, kernel, act, wgt):
    model = two_bit_model(act_type, weight_type, values, opset)
    onnx.save(model, tmp_path / "m.onnx")
    meta = compile_file(tmp_path / "m.onnx", tmp_path / "m.tar", CompileOptions())
    assert [(l["kernel"], l["activation"], l["weight"]) for l in meta["layers"]] == [(kernel, act, wgt)] * 2
    for seed in range(3):
        x = (np.random.default_rng(seed).standard_normal((1, 3, 6, 6)) * 2).astype(np.float32)
        out, _ = run_local(tmp_path / "m.tar", x)
        # integer conv and fc sums of small dyadic values: float32 is exact here too
        np.testing.assert_array_equal(out, onnxruntime(model, x)[0])


def test_nonpositive_dequantize_scale_is_one_line_error_naming_the_node(tmp_path):
    model = two_bit_model(TensorProto.UINT4, TensorProto.INT4, [-1, 1], 21)
    for init in model.graph.initializer:
        if init.name == "ws":
            init.CopyFrom(numpy_helper.from_array(np.array([0.5, -0.25, 1.0, 0.75], np.float32), "ws"))
    model.graph.node[2].name = "weight_dq"
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(UserError, match="node 'weight_dq' \\(DequantizeLinear\\): scale must be positive") as err:
        compile_file(tmp_path / "bad.onnx", tmp_path / "bad.tar", CompileOptions())
    assert "\n" not in str(err.value)


def test_quantized_float_weights_and_blocked_scales(tmp_path):
    """Float conv weights through QuantizeLinear→DequantizeLinear (INT4, per channel) fold and
    lower; a MatMul weight with blocked scales (block_size 16 along K) stays float, exact."""
    rng = np.random.default_rng(5)
    conv_w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    fc_q = rng.integers(-8, 8, (64, 5))
    fc_scale = (2.0 ** -rng.integers(2, 5, (4, 5))).astype(np.float32)  # 64 / 16 blocks along K
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
        helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["d", "wd"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["flat"]),
        helper.make_node("QuantizeLinear", ["flat", "s", "z"], ["flat_q"]),
        helper.make_node("DequantizeLinear", ["flat_q", "s", "z"], ["flat_d"]),
        helper.make_node("DequantizeLinear", ["fw", "fs"], ["fwd"], axis=0, block_size=16),
        helper.make_node("MatMul", ["flat_d", "fwd"], ["out"], name="fc"),
    ]
    init = [
        numpy_helper.from_array(np.float32(0.25), "s"),
        helper.make_tensor("z", TensorProto.INT4, [], [0]),
        numpy_helper.from_array(conv_w, "w"),
        numpy_helper.from_array(np.array([0.25, 0.125, 0.5, 0.25], np.float32), "ws"),
        helper.make_tensor("wz", TensorProto.INT4, [4], [0] * 4),
        helper.make_tensor("fw", TensorProto.INT4, fc_q.shape, fc_q.ravel().tolist()),
        numpy_helper.from_array(fc_scale, "fs"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5])],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "m.onnx")
    meta = compile_file(tmp_path / "m.onnx", tmp_path / "m.tar", CompileOptions())
    conv, fc = meta["layers"]
    assert (conv["kernel"], conv["activation"], conv["weight"]) == ("subbyte", "signed4", "signed4")
    assert fc["kernel"] == "float" and fc["reason"].startswith("blocked quantization scale")
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, 3, 6, 6)).astype(np.float32)
        out, _ = run_local(tmp_path / "m.tar", x)
        np.testing.assert_allclose(out, onnxruntime(model, x)[0], rtol=1e-5, atol=1e-5)
