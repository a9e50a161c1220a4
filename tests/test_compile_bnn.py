"""Layers binarized in the graph (Sign → ±s conv/Gemm) compile to 1-bit kernels with no
accuracy change: the compiled module equals ONNX Runtime on the same file, exactly."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx import helper

from compiled import compile_file, run_local
from onnx_models import bipolar, dyadic_input, make_model, tiny_bnn
from tvmbits.ops import reference
from tvmbits.compiler import CompileOptions


def onnxruntime_outputs(model, x) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})


def onnxruntime(model, x):
    return onnxruntime_outputs(model, x)[0]


CASES = [
    dict(),
    dict(scale=False),
    dict(channels=(3, 33, 70), size=11, strides=(2, 1), pads=(1, 1)),
    dict(channels=(32, 64, 31), size=7, strides=(1, 3), pads=(0, 2)),
    dict(batch=3, seed=4),
]


# by default each case with one kernel (auto: cases 0, 2, 4; subbyte: 1, 3); the rest with -m slow
@pytest.mark.parametrize("kernel, case", [
    pytest.param(kernel, case, id=f"{kernel}-{i}", marks=() if (i % 2 == 0) == (kernel == "auto") else pytest.mark.slow)
    for kernel in ("auto", "subbyte") for i, case in enumerate(CASES)])
def test_binarized_model_equals_onnxruntime(tmp_path, case, kernel):
    model = tiny_bnn(**case)
    path = tmp_path / "bnn.onnx"
    onnx.save(model, path)
    meta = compile_file(path, tmp_path / "bnn.tar", CompileOptions(kernel=kernel))
    x = dyadic_input([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim], seed=1)
    out, _ = run_local(tmp_path / "bnn.tar", x)
    np.testing.assert_array_equal(out, onnxruntime(model, x))
    kinds = [(layer["name"], layer["kernel"], layer["origin"]) for layer in meta["layers"]]
    expected = "bitserial" if kernel == "auto" else kernel
    assert kinds == [
        ("stem", "float", "float"),
        ("bconv0", expected, "binarized"),
        ("bconv1", expected, "binarized"),
        ("fc", expected, "binarized"),
    ]


def test_metadata_reports_packed_weight_bytes(tmp_path):
    onnx.save(tiny_bnn(channels=(64, 64, 64)), tmp_path / "bnn.onnx")
    meta = compile_file(tmp_path / "bnn.onnx", tmp_path / "bnn.tar", CompileOptions())
    bconv = meta["layers"][1]
    assert bconv["weight_bytes_float"] == 64 * 64 * 9 * 4
    assert bconv["weight_bytes_packed"] == 64 * 9 * 2 * 4  # 64 channels = two uint32 words a tap
    assert meta["layers"][0]["reason"].startswith("float in the model")


def test_sign_of_zero_is_plus_one(tmp_path):
    """ONNX Sign(0) = 0; tvmbits binarizes 0 to +1 (as Larq's ste_sign and QONNX's BipolarQuant)."""
    rng = np.random.default_rng(0)
    w = bipolar(rng, (6, 4, 3, 3))
    nodes = [
        helper.make_node("Sign", ["input"], ["s"]),
        helper.make_node("Conv", ["s", "w"], ["out"], name="bconv"),
    ]
    model = make_model(nodes, [("input", [1, 4, 5, 5])], [("out", [1, 6, 3, 3])], {"w": w})
    onnx.save(model, tmp_path / "sign.onnx")
    compile_file(tmp_path / "sign.onnx", tmp_path / "sign.tar", CompileOptions())
    x = dyadic_input((1, 4, 5, 5))
    x[0, :, 1:4, 2] = 0
    out, meta = run_local(tmp_path / "sign.tar", x)
    assert meta["layers"][0]["kernel"] == "bitserial"
    plus_one = np.where(x >= 0, 1, -1).transpose(0, 2, 3, 1).astype(np.int64)
    expected = reference.conv2d_nhwc(plus_one, w.transpose(0, 2, 3, 1).astype(np.int64), (1, 1), (0, 0, 0, 0))
    np.testing.assert_array_equal(out, expected.transpose(0, 3, 1, 2))
    assert not np.array_equal(out, onnxruntime(model, x))  # ONNX's Sign(0) = 0 differs
