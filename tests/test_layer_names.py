"""Each layer keeps its ONNX name, and with it its quantizer facts, whatever the importer makes
of the layers before it: a 1-D convolution before a quantized 2-D one (which the passes list
as float with a reason) no longer shifts the facts of every later layer."""

import numpy as np
import onnx
from onnx import helper

from compiled import compile_file, run_local
from onnx_models import make_model
from test_qdq import INT4_WEIGHTS, onnxruntime
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static


class _Samples(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(3)
        self.samples = iter([{"input": rng.standard_normal((1, 3, 16)).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.samples, None)


def conv1d_then_conv2d():
    rng = np.random.default_rng(0)
    init = {
        "w1": (rng.standard_normal((4, 3, 3)) * 0.5).astype(np.float32),
        "w2": (rng.standard_normal((6, 4, 3, 3)) * 0.3).astype(np.float32),
        "shape": np.array([1, 4, 4, 4], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1], name="conv1d"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "shape"], ["r2"]),
        helper.make_node("Conv", ["r2", "w2"], ["output"], pads=[1, 1, 1, 1], name="conv2d"),
    ]
    model = make_model(nodes, [("input", [1, 3, 16])], [("output", [1, 6, 4, 4])], init, opset=21)
    model.ir_version = 10
    return model


def test_conv1d_before_a_quantized_conv2d_keeps_its_facts(tmp_path):
    onnx.save(conv1d_then_conv2d(), tmp_path / "float.onnx")
    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), _Samples(),
                    quant_format=QuantFormat.QDQ, **INT4_WEIGHTS)
    meta = compile_file(tmp_path / "qdq.onnx", tmp_path / "qdq.tar")
    rows = {l["name"]: (l["op"], l["kernel"], l["origin"], l["weight"]) for l in meta["layers"]}
    assert rows["conv2d"] == ("conv2d", "subbyte", "qdq", "signed4")
    assert rows["conv1d"][:3] == ("conv1d", "float", "qdq")
    assert "1-D convolution" in next(l["reason"] for l in meta["layers"] if l["name"] == "conv1d")
    x = np.random.default_rng(9).standard_normal((1, 3, 16)).astype(np.float32)
    out, _ = run_local(tmp_path / "qdq.tar", x)
    np.testing.assert_allclose(out, onnxruntime(onnx.load(tmp_path / "qdq.onnx"), x)[0], rtol=1e-5, atol=1e-5)
