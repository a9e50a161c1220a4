"""examples/bireal_resnet18.py: the graph's shape, and its exactness design checked on ONNX Runtime.

`evaluate_float64` re-runs the graph in float64 with numpy, up to GlobalAveragePool. Every
value there is a dyadic rational of fewer than 24 significant bits by design, so ONNX
Runtime's float32 results must equal it exactly; any rounding would show as a difference.
"""

import functools
import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

_spec = importlib.util.spec_from_file_location(
    "bireal_resnet18", Path(__file__).parents[1] / "examples" / "bireal_resnet18.py"
)
bireal = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bireal)

FEATURES = "stage4.block2.unit2.residual"  # the input of GlobalAveragePool


def _pad(x, pads, value=0.0):
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _windows(x, node):
    """[N,C,Ho,Wo,kh,kw] views of the padded input under the node's kernel, strides and pads."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    kh, kw = attrs["kernel_shape"]
    sh, sw = attrs.get("strides", [1, 1])
    fill = -np.inf if node.op_type == "MaxPool" else 0.0
    x = _pad(x, attrs.get("pads", [0, 0, 0, 0]), fill)
    return np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def evaluate_float64(model, x, stop=FEATURES):
    """All tensors up to `stop`, computed in float64 (Conv has no bias and no groups here)."""
    values = {"input": x.astype(np.float64)}
    values.update({t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer})
    for node in model.graph.node:
        ins = [values[i] for i in node.input]
        if node.op_type == "Conv":
            y = np.einsum("nchwij,ocij->nohw", _windows(ins[0], node), ins[1], optimize=True)
        elif node.op_type == "MaxPool":
            y = _windows(ins[0], node).max(axis=(4, 5))
        elif node.op_type == "AveragePool":
            y = _windows(ins[0], node).mean(axis=(4, 5))
        elif node.op_type == "Sign":
            y = np.sign(ins[0])
        elif node.op_type == "Mul":
            y = ins[0] * ins[1]
        elif node.op_type == "Add":
            y = ins[0] + ins[1]
        else:
            raise NotImplementedError(node.op_type)
        values[node.output[0]] = y
        if node.output[0] == stop:
            return values
    raise KeyError(stop)


def _ort_features(model, x):
    """ONNX Runtime's float32 FEATURES, exposed as an extra graph output."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(FEATURES))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    logits, features = session.run(["logits", FEATURES], {"input": x})
    return logits, features


@functools.cache
def _model(size):
    return bireal.build_model(size, num_classes=1000 if size == 224 else 10)


@pytest.mark.parametrize("size", [224, 64])
def test_ort_float32_equals_float64_before_pooling(size):
    model, x = _model(size), bireal.make_input(size)
    logits, features = _ort_features(model, x)
    expected = evaluate_float64(model, x)[FEATURES]
    assert features.shape == expected.shape == (1, 512, size // 32, size // 32)
    np.testing.assert_array_equal(features.astype(np.float64), expected)
    assert logits.shape == (1, 1000 if size == 224 else 10) and np.isfinite(logits).all()


@pytest.mark.parametrize("size", [224, 64])
def test_sign_inputs_are_nonzero_and_balanced(size):
    model = _model(size)
    values = evaluate_float64(model, bireal.make_input(size))
    signs = [n for n in model.graph.node if n.op_type == "Sign"]
    assert len(signs) == 16
    for node in signs:
        v = values[node.input[0]]
        assert np.count_nonzero(v == 0) == 0, node.name
        assert 0.2 <= np.mean(v > 0) <= 0.8, (node.name, np.mean(v > 0))


def test_node_counts():
    model = _model(224)
    graph = model.graph
    producer = {n.output[0]: n.op_type for n in graph.node}
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    kinds = sorted((producer.get(n.input[0], n.input[0]), weights[n.input[1]].shape[2:]) for n in convs)
    expected = [("AveragePool", (1, 1))] * 3 + [("Sign", (3, 3))] * 16 + [("input", (7, 7))]
    assert kinds == expected  # 3 float 1x1 downsample convs, 16 binarized convs, 1 float stem conv
    for n in convs:
        if producer.get(n.input[0]) == "Sign":  # entries ±s_o, s_o a power of two per output channel
            w = np.abs(weights[n.input[1]]).reshape(len(weights[n.input[1]]), -1)
            assert (w == w[:, :1]).all() and (np.log2(w[:, 0]) == np.round(np.log2(w[:, 0]))).all()
    assert [n.op_type for n in graph.node].count("Gemm") == 1
    assert [(op.domain, op.version) for op in model.opset_import] == [("", 17)]
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]
