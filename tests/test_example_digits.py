"""The digits example, trained for two epochs: its QONNX export compiled for x86_64 predicts
exactly what Brevitas' PyTorch forward predicts on every test image, with every layer on a
low-bit kernel and logits within float32 round-off."""

import sys
from pathlib import Path

import numpy as np
import torch

from compiled import compile_file, run_local
from tvmbits.compiler import CompileOptions

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import digits_bnn  # noqa: E402


def test_compiled_digits_bnn_predicts_as_pytorch(tmp_path):
    net, (_, x_test, _, _) = digits_bnn.train(epochs=2, seed=1)
    digits_bnn.export_qonnx(net, torch.zeros(digits_bnn.SHAPE), str(tmp_path / "d.onnx"), input_names=["input"])
    meta = compile_file(tmp_path / "d.onnx", tmp_path / "d.tar", CompileOptions())
    assert [l["kernel"] for l in meta["layers"]] == ["subbyte", "bitserial", "bitserial", "bitserial"]
    by_torch = digits_bnn.torch_logits(net, x_test)
    by_tvmbits = np.concatenate([run_local(tmp_path / "d.tar", image[None])[0] for image in x_test])
    np.testing.assert_array_equal(by_tvmbits.argmax(1), by_torch.argmax(1))
    np.testing.assert_allclose(by_tvmbits, by_torch, rtol=1e-5, atol=1e-4)
