"""Post-training quantization (--wbits/--abits) of a float model: the compiled module equals a
numpy simulation built from the same plan on the integer reference."""

import numpy as np
import onnx
import pytest
from compiled import compile_file, run_local
from lowbit_kernels import KERNEL_1x2
from onnx_models import float_cnn
from tvmbits.compiler import CompileOptions, plan_model
from tvmbits.ops import reference


def plans_for(model, wbits, abits, samples, all_layers=True):
    options = CompileOptions(wbits=wbits, abits=abits, all_layers=all_layers, calibrate=samples)
    return {plan.name: plan for plan in plan_model(model, options).plans}


def simulate(plans, x, weights):
    """float_cnn's graph with every layer as its plan says, in float32 like the kernels' epilogue."""

    def layer(name, data):  # data NHWC float32 (dense: [N, K])
        plan = plans[name]
        if plan.act.kind == "bipolar":
            values = np.where(data >= 0, 1, -1)
        else:
            lo, hi = plan.act.value_range
            values = np.clip(np.rint(data / np.float32(plan.act_scale)), lo, hi)
        values = values.astype(np.int64)
        if plan.layer.op == "conv2d":
            acc = reference.conv2d_nhwc(values, plan.weight_values, plan.layer.attrs["strides"], plan.layer.attrs["padding"])
        else:
            acc = reference.dense(values, plan.weight_values)
        scale = (np.float64(plan.act_scale) * plan.weight_scale).astype(np.float32)
        return acc.astype(np.float32) * scale

    relu = lambda v: np.maximum(v, np.float32(0))
    h = relu(layer("conv0", x.transpose(0, 2, 3, 1)))
    h = relu(layer("conv1", h) + weights["b1"])
    h = relu(layer("conv2", h))
    # the plan holds the classifier weight as the module has it: FoldFlattenTranspose reorders its
    # rows to flatten the NHWC data as it lies
    return layer("fc", h.reshape(h.shape[0], -1))


# by default 1-bit (bipolar) weights with 1- and 2-bit activations, 2-, 4- and 8-bit; the rest with -m slow
@pytest.mark.parametrize("wbits,abits", [(1, 1), (1, 2), (2, 2), (4, 4), (8, 8)] + [
    pytest.param(w, a, marks=pytest.mark.slow) for w, a in ((2, 1), (3, 3))])
def test_quantized_model_equals_integer_simulation(tmp_path, wbits, abits):
    model = float_cnn()
    onnx.save(model, tmp_path / "cnn.onnx")
    rng = np.random.default_rng(7)
    samples = [rng.standard_normal((1, 3, 12, 12)).astype(np.float32) for _ in range(3)]
    np.save(tmp_path / "calib.npy", np.stack(samples))
    options = CompileOptions(wbits=wbits, abits=abits, all_layers=True, calibrate=[str(tmp_path / "calib.npy")])
    meta = compile_file(tmp_path / "cnn.onnx", tmp_path / "cnn.tar", options)
    plans = plans_for(model, wbits, abits, samples)
    assert [layer["kernel"] for layer in meta["layers"]] == [plans[n].kernel for n in ("conv0", "conv1", "conv2", "fc")]
    assert all(plan.kernel != "float" for plan in plans.values())
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    x = rng.standard_normal((1, 3, 12, 12)).astype(np.float32)
    out, _ = run_local(tmp_path / "cnn.tar", x)
    np.testing.assert_allclose(out, simulate(plans, x, weights), rtol=1e-5, atol=1e-5)


def test_first_and_last_layers_stay_float_by_default(tmp_path):
    onnx.save(float_cnn(), tmp_path / "cnn.onnx")
    meta = compile_file(tmp_path / "cnn.onnx", tmp_path / "cnn.tar", CompileOptions(wbits=1, abits=2))
    kernels = {layer["name"]: (layer["kernel"], layer["reason"]) for layer in meta["layers"]}
    assert kernels["conv0"][0] == kernels["fc"][0] == "float"
    assert "--all-layers" in kernels["conv0"][1]
    assert kernels["conv1"] == (KERNEL_1x2, None)
    assert meta["layers"][1]["activation"] == "unsigned2"  # after ReLU
    assert meta["layers"][1]["weight"] == "bipolar1"


def test_float_model_without_bits_stays_float(tmp_path):
    onnx.save(float_cnn(), tmp_path / "cnn.onnx")
    meta = compile_file(tmp_path / "cnn.onnx", tmp_path / "cnn.tar", CompileOptions())
    assert {layer["kernel"] for layer in meta["layers"]} == {"float"}
