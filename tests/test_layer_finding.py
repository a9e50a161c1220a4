"""Which convolutions tvmbits finds as layers: a `Sign`-fed conv with SAME padding is
binarized (the frontend writes SAME as explicit pads, so TVM's importer emits no separate pad
between Sign and conv), and 1-D convolutions are listed like 2-D ones."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from compiled import compile_file, run_local
from onnx_models import bipolar, make_model
from tvmbits.compiler import CompileOptions, plan_model


@pytest.mark.parametrize("auto_pad, stride, size", [("SAME_UPPER", 1, 8), ("SAME_LOWER", 2, 7)])
def test_sign_fed_conv_with_same_padding_is_binarized(tmp_path, auto_pad, stride, size):
    rng = np.random.default_rng(3)
    out = -(-size // stride)
    nodes = [
        helper.make_node("Sign", ["input"], ["s"]),
        helper.make_node("Conv", ["s", "w"], ["y"], auto_pad=auto_pad, strides=[stride, stride], name="bconv"),
    ]
    model = make_model(nodes, [("input", [1, 4, size, size])], [("y", [1, 8, out, out])],
                       {"w": bipolar(rng, (8, 4, 3, 3))})
    onnx.save(model, tmp_path / "same.onnx")
    meta = compile_file(tmp_path / "same.onnx", tmp_path / "same.tar", CompileOptions(use_tuning=False))
    assert [(layer["name"], layer["kernel"]) for layer in meta["layers"]] == [("bconv", "bitserial")]
    x = (rng.integers(1, 9, (1, 4, size, size)) * rng.choice([-1, 1], (1, 4, size, size)) / 4).astype(np.float32)
    got, _ = run_local(tmp_path / "same.tar", x)
    expected = ort.InferenceSession(str(tmp_path / "same.onnx")).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, expected)


def test_one_dimensional_convolutions_are_listed(tmp_path):
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Sign", ["input"], ["s"]),
        helper.make_node("Conv", ["s", "w"], ["y"], pads=[1, 1], name="bconv1d"),
        helper.make_node("Conv", ["y", "v"], ["z"], name="fconv1d"),
    ]
    model = make_model(nodes, [("input", [1, 4, 16])], [("z", [1, 8, 14])],
                       {"w": bipolar(rng, (8, 4, 3)), "v": rng.standard_normal((8, 8, 3)).astype(np.float32)})
    onnx.save(model, tmp_path / "c1d.onnx")
    plans = [plan.to_json() for plan in plan_model(tmp_path / "c1d.onnx", CompileOptions()).plans]
    assert [(plan["name"], plan["op"], plan["kernel"]) for plan in plans] == [
        ("bconv1d", "conv1d", "float"), ("fconv1d", "conv1d", "float")
    ]
    assert all(plan["reason"].startswith("1-D convolution") for plan in plans)
