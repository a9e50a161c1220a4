"""Brevitas networks exported with `export_qonnx` compile to low-bit kernels, and the compiled
x86_64 output equals both peers on the same inputs: the qonnx package's reference executor
(`execute_onnx`) and Brevitas' own PyTorch forward — identical integer accumulations, float
outputs within float32 round-off, identical arg-max."""

import json

import numpy as np
import pytest
import torch

import brevitas_models as bm
from compiled import compile_file, run_local
from lowbit_kernels import KERNEL_2x2
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from tvmbits.cli import main
from tvmbits.compiler import CompileOptions
from tvmbits.ops import reference

SHAPE = (1, 3, 8, 8)


def qonnx_executor(path, x):
    model = ModelWrapper(str(path))
    return execute_onnx(model, {"input": x})[model.graph.output[0].name]


def inputs(count=4):
    return [np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32) for seed in range(count)]


def assert_round_off(out, expected):
    """Equal up to float32 round-off of sums of a few hundred terms of magnitude ~1."""
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "mixed.onnx"
    net = bm.mixed_cnn()
    bm.export(net, SHAPE, path)
    meta = compile_file(path, path.with_suffix(".tar"), CompileOptions())
    return net, path, meta


def test_mixed_network_lowers_every_layer(mixed):
    _, _, meta = mixed
    rows = [(l["kernel"], l["origin"], l["activation"], l["weight"]) for l in meta["layers"]]
    assert rows == [
        ("subbyte", "qonnx", "signed4", "signed4"),
        (KERNEL_2x2, "qonnx", "unsigned2", "signed2"),
        ("bitserial", "qonnx", "bipolar1", "bipolar1"),
        ("bitserial", "qonnx", "bipolar1", "bipolar1"),
    ]
    assert "per-channel scale" in meta["layers"][0]["found"]["weight"]


def test_mixed_network_equals_qonnx_executor_and_brevitas(mixed):
    net, path, _ = mixed
    for x in inputs():
        out, _ = run_local(path.with_suffix(".tar"), x)
        by_qonnx, by_brevitas = qonnx_executor(path, x), bm.forward(net, x)
        assert_round_off(out, by_qonnx)
        assert_round_off(out, by_brevitas)
        assert out.argmax() == by_qonnx.argmax() == by_brevitas.argmax()


@pytest.mark.parametrize("last", [1, pytest.param(4, marks=pytest.mark.slow), pytest.param(7, marks=pytest.mark.slow), 12],
                         ids=["conv4x4", "conv2x2", "conv1x1", "linear1x1"])  # by default the first conv and the linear
def test_integer_accumulations_equal_brevitas_integers(tmp_path, last):
    """The network cut after one layer: compiled output / (s_a · s_w) is the integer sum of
    Brevitas' own integer activations times its integer weights, exactly."""
    net = bm.mixed_cnn()
    prefix = torch.nn.Sequential(*list(net)[: last + 1]).eval()
    layer = net[last]
    bm.export(prefix, SHAPE, tmp_path / "prefix.onnx")
    compile_file(tmp_path / "prefix.onnx", tmp_path / "prefix.tar", CompileOptions())
    for x in inputs(2):
        with torch.no_grad():
            act = torch.nn.Sequential(*list(net)[:last]).eval()(torch.from_numpy(x))
            weight = layer.quant_weight()
            acts, weights = act.int().numpy().astype(np.int64), weight.int().numpy().astype(np.int64)
            scale = (act.scale * weight.scale).numpy().astype(np.float64).reshape(-1)
        out, _ = run_local(tmp_path / "prefix.tar", x)
        if isinstance(layer, torch.nn.Linear):
            out = out - layer.bias.detach().numpy()
            expected = reference.dense(acts, weights)
        else:
            padding = (layer.padding[0], layer.padding[1]) * 2
            expected = reference.conv2d_nhwc(
                acts.transpose(0, 2, 3, 1), weights.transpose(0, 2, 3, 1), layer.stride, padding
            ).transpose(0, 3, 1, 2)
            scale = scale.reshape((1, -1, 1, 1)) if scale.size > 1 else scale
        accumulation = out / scale
        assert np.abs(accumulation - np.rint(accumulation)).max() < 1e-3
        np.testing.assert_array_equal(np.rint(accumulation).astype(np.int64), expected)
        by_qonnx = qonnx_executor(tmp_path / "prefix.onnx", x)
        if isinstance(layer, torch.nn.Linear):
            by_qonnx = by_qonnx - layer.bias.detach().numpy()
        np.testing.assert_array_equal(np.rint(by_qonnx / scale).astype(np.int64), expected)


def test_trunc_avg_pool_output_feeds_a_lowered_conv(tmp_path):
    net = bm.trunc_pool_cnn()
    path = tmp_path / "trunc.onnx"
    bm.export(net, SHAPE, path)
    meta = compile_file(path, tmp_path / "trunc.tar", CompileOptions())
    assert [(l["kernel"], l["activation"]) for l in meta["layers"]] == [("subbyte", "signed4"), ("subbyte", "unsigned4")]
    for x in inputs(3):
        out, _ = run_local(tmp_path / "trunc.tar", x)
        assert_round_off(out, qonnx_executor(path, x))
        assert_round_off(out, bm.forward(net, x))


def test_layers_that_cannot_be_lowered_stay_float_and_exact(tmp_path, capsys):
    net = bm.partly_lowerable_cnn()
    path = tmp_path / "partly.onnx"
    bm.export(net, SHAPE, path)
    assert main(["compile", str(path), "-o", str(tmp_path / "partly.tar")]) == 0
    for x in inputs(3):
        out, _ = run_local(tmp_path / "partly.tar", x)
        by_qonnx, by_brevitas = qonnx_executor(path, x), bm.forward(net, x)
        assert_round_off(out, by_qonnx)
        assert_round_off(out, by_brevitas)
        assert out.argmax() == by_qonnx.argmax() == by_brevitas.argmax()
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "partly.tar")]) == 0
    report = json.loads(capsys.readouterr().out)
    kernels = [(l["kernel"], l["abits"], l["wbits"]) for l in report["layers"]]
    assert kernels == [("float", None, None), ("subbyte", 8, 4), ("subbyte", 4, 4),
                       ("float", None, None), (KERNEL_2x2, 2, 2)]
    floats = report["summary"]["float_layers"]
    assert [row["reason"] for row in floats][0] == "grouped convolution (groups=3)"
    assert floats[1]["reason"].startswith("16-bit activation")
    assert floats[0]["found"] == {"activation": "signed4, per-tensor scale",
                                  "weight": "signed4 narrow, per-channel scale"}
    assert floats[1]["found"]["activation"] == "signed16, per-tensor scale"
    shifted = report["layers"][1]  # Brevitas' shifted uint8: runs on its codes, minus z·Σw
    assert shifted["origin"] == "qonnx" and shifted["activation_zero_point"]
    assert shifted["found"]["activation"].startswith("unsigned8, per-tensor scale, zero point")
    lowered = report["layers"][2]
    assert lowered["weight_bytes_float"] == 8 * 8 * 9 * 4
    # 8 output channels stored as a block of 16, 3×3 taps, 8 input channels two 4-bit values a byte
    assert lowered["weight_bytes_packed"] == 16 * 9 * 8 // 2
