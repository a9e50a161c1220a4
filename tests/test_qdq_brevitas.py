"""Brevitas' QCDQ export (QuantizeLinear → Clip → DequantizeLinear, 2- and 4-bit values held in
int8/uint8): the Clip bounds give the true bit widths, the layers lower to bit-serial and
sub-byte kernels, and the compiled output equals ONNX Runtime executing the Q/Clip/DQ nodes
and Brevitas' PyTorch forward (float32 round-off, same arg-max)."""

import numpy as np
import onnx
import torch
from torch import nn

import brevitas.nn as qnn
import brevitas_models as bm
from brevitas.export import export_onnx_qcdq
from compiled import compile_file, run_local
from lowbit_kernels import KERNEL_2x2
from test_qdq import onnxruntime
from tvmbits.compiler import CompileOptions

SHAPE = (1, 3, 8, 8)


def qcdq_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
        qnn.QuantConv2d(3, 16, 3, padding=1, bias=False, **bm.per_channel(4)),
        nn.BatchNorm2d(16),
        qnn.QuantReLU(bit_width=2, return_quant_tensor=True),
        qnn.QuantConv2d(16, 16, 3, stride=2, padding=1, bias=False, **bm.per_channel(2)),
        nn.BatchNorm2d(16),
        qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
        nn.Flatten(),
        qnn.QuantLinear(16 * 4 * 4, 10, bias=True, weight_bit_width=4),
    )
    return bm._settle(net, torch.randn(8, *SHAPE[1:]))


def test_brevitas_qcdq_export_lowers_and_equals_onnxruntime_and_brevitas(tmp_path):
    net = qcdq_cnn()
    path = tmp_path / "qcdq.onnx"
    export_onnx_qcdq(net, torch.zeros(SHAPE), str(path), input_names=["input"])
    model = onnx.load(path)
    assert {n.op_type for n in model.graph.node} >= {"QuantizeLinear", "Clip", "DequantizeLinear"}
    meta = compile_file(path, tmp_path / "qcdq.tar", CompileOptions())
    rows = [(l["kernel"], l["origin"], l["activation"], l["weight"]) for l in meta["layers"]]
    assert rows == [
        ("subbyte", "qdq", "signed4", "signed4"),
        (KERNEL_2x2, "qdq", "unsigned2", "signed2"),
        ("subbyte", "qdq", "signed4", "signed4"),
    ]
    assert meta["layers"][0]["found"]["weight"].startswith("signed4 narrow")
    for seed in range(4):
        x = np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)
        out, _ = run_local(tmp_path / "qcdq.tar", x)
        by_ort, by_brevitas = onnxruntime(model, x)[0], bm.forward(net, x)
        np.testing.assert_allclose(out, by_ort, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out, by_brevitas, rtol=1e-5, atol=1e-5)
        assert out.argmax() == by_ort.argmax() == by_brevitas.argmax()
