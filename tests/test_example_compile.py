"""The binarized ResNet-18 example compiled for x86_64 gives ONNX Runtime's numbers: exactly
up to the float classifier (every activation there is dyadic and exact in float32), within
float32 round-off after it."""

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from compiled import run_local
from tvmbits.compiler import CompileOptions, compile_model

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from bireal_resnet18 import build_model, make_input  # noqa: E402

LAST_RESIDUAL = "stage4.block2.unit2.residual"


def test_example_equals_onnxruntime(tmp_path):
    model = build_model(input_size=224)
    model.graph.output.append(helper.make_tensor_value_info(LAST_RESIDUAL, TensorProto.FLOAT, [1, 512, 7, 7]))
    path = tmp_path / "bireal.onnx"
    onnx.save(model, path)
    meta = compile_model(path, tmp_path / "bireal.tar", CompileOptions(target="host"))
    kernels = [layer["kernel"] for layer in meta["layers"]]
    assert kernels.count("bitserial") == 16 and kernels.count("float") == 5
    x = make_input(224, seed=1)
    expected_logits, expected_residual = ort.InferenceSession(str(path)).run(None, {"input": x})
    (logits, residual), _ = run_local(tmp_path / "bireal.tar", x)
    np.testing.assert_array_equal(residual, expected_residual)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert logits.argmax() == expected_logits.argmax()
