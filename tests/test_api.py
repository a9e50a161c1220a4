"""The public Python API: tvmbits.compile → Artifact, tvmbits.load → Model, tvmbits.Remote; the
library raises typed one-line errors (ValueError subclasses) where the CLI exits with code 2."""

import math

import numpy as np
import onnxruntime as ort
import pytest

import tvmbits
from onnx_models import dyadic_input, tiny_bnn


@pytest.fixture(scope="module")
def bnn():
    return tiny_bnn()


@pytest.fixture(scope="module")
def artifact(bnn):
    return tvmbits.compile(bnn)  # for this machine


def test_compile_load_call_benchmark_profile(bnn, artifact, tmp_path):
    assert [layer["kernel"] for layer in artifact.metadata["layers"]] == ["float", "bitserial", "bitserial", "bitserial"]
    x = dyadic_input([1, 3, 9, 9], seed=2)
    expected = ort.InferenceSession(bnn.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    saved = artifact.save(tmp_path / "bnn.tar")
    for source in (artifact, saved):
        model = tvmbits.load(source)
        outputs = model(input=x)
        assert list(outputs) == ["logits"]
        np.testing.assert_array_equal(outputs["logits"], expected)
    timing = model.benchmark(repeat=3)
    assert timing["repeat"] == 3 and 0 < timing["median"] and math.isfinite(timing["mean"])
    rows = model.profile()
    assert any("bitserial_conv2d" in row["name"] for row in rows)
    assert abs(sum(row["share"] for row in rows) - 1) < 1e-6


def test_inputs_are_checked_with_typed_errors(artifact):
    model = tvmbits.load(artifact)
    with pytest.raises(tvmbits.InputError, match="no input 'image'"):
        model(image=np.zeros((1, 3, 9, 9), np.float32))
    with pytest.raises(tvmbits.InputError, match=r"shape \(1, 3, 8, 8\) does not match"):
        model(input=np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(tvmbits.InputError, match="dtype float64"):
        model(input=np.zeros((1, 3, 9, 9)))
    with pytest.raises(ValueError):  # every library error is a ValueError
        model()


def test_compile_errors_are_typed(bnn):
    with pytest.raises(tvmbits.OptionError, match="--wbits 9"):
        tvmbits.compile(bnn, wbits=9)
    with pytest.raises(tvmbits.TargetError, match="pdp11"):
        tvmbits.compile(bnn, "pdp11")
    with pytest.raises(tvmbits.ModelError, match="no such model file"):
        tvmbits.compile("absent.onnx")
    with pytest.raises(TypeError, match="wbitz"):
        tvmbits.compile(bnn, wbitz=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "needs --rpc"),
        (dict(rpc="h:1", tracker="h:2", key="k"), "either --rpc or --tracker"),
        (dict(tracker="h:2"), "--tracker and --key go together"),
        (dict(rpc="h:1", timeout=float("nan")), "--timeout nan"),
        (dict(rpc="h:1", timeout=0), "--timeout 0"),
    ],
)
def test_remote_is_validated(kwargs, message):
    with pytest.raises(tvmbits.OptionError, match=message):
        tvmbits.Remote(**kwargs)
