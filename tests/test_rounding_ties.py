"""Whole quantized models whose activations land exactly on rounding ties (power-of-two
scales, as trained QONNX models have them), compiled and compared with an exact reference
(`exact_reference.py`, float64 on dyadic values) for every QONNX rounding mode.

tvmbits' answer is the exact one: its low-bit layers accumulate integers, and with power-of-two
scales the float32 epilogue (accumulator × scale, + bias) is exact while the accumulator stays
below 2^24, so the next quantizer sees the tie itself and rounds it as the model's rounding mode
says (ROUND/HALF_EVEN: to even; HALF_UP: away from zero; HALF_DOWN: toward zero; ...)."""

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

import exact_reference
from compiled import compile_file, run_local
from tvmbits.compiler import CompileOptions
from tvmbits.frontend.rounding import MODES

DOMAIN = "qonnx.custom_op.general"


def tie_model(seed: int = 0) -> onnx.ModelProto:
    """input → Quant(4 bit, 2^-2) → Conv(2-bit weights, 2^-1), then one branch per rounding mode
    M: Quant(8 bit, 2^-1, M) → Conv(2-bit weights, 2^-1) → Quant(8 bit, 2^-1, M) → output M.
    Each pre-quantizer value is an accumulator / 4 or / 8: about a quarter are exact ties."""
    rng = np.random.default_rng(seed)
    init = {"w0": rng.integers(-2, 2, (6, 4, 3, 3)) * 0.5}
    nodes = []

    def quant(name, x, scale, bits, rounding_mode="ROUND"):
        init.update({f"{name}_s": scale, f"{name}_z": 0.0, f"{name}_b": float(bits)})
        nodes.append(helper.make_node(
            "Quant", [x, f"{name}_s", f"{name}_z", f"{name}_b"], [name], name=name, domain=DOMAIN,
            signed=1, narrow=0, rounding_mode=rounding_mode,
        ))

    quant("qx", "input", 0.25, 4)
    quant("qw0", "w0", 0.5, 2)
    nodes.append(helper.make_node("Conv", ["qx", "qw0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"))
    for mode in MODES:
        init[f"w_{mode}"] = rng.integers(-2, 2, (5, 6, 3, 3)) * 0.5
        quant(f"q1_{mode}", "c0", 0.5, 8, mode)
        quant(f"qw_{mode}", f"w_{mode}", 0.5, 2)
        nodes.append(helper.make_node(
            "Conv", [f"q1_{mode}", f"qw_{mode}"], [f"c_{mode}"], pads=[1, 1, 1, 1], name=f"conv_{mode}"
        ))
        quant(mode, f"c_{mode}", 0.5, 8, mode)
    graph = helper.make_graph(
        nodes, "ties",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 6, 6])],
        [helper.make_tensor_value_info(mode, TensorProto.FLOAT, [1, 5, 6, 6]) for mode in MODES],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in init.items()],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 2)], ir_version=8
    )


@pytest.mark.slow  # one whole-model compile of about a minute
def test_every_rounding_mode_at_exact_ties_gives_the_exact_answer(tmp_path):
    model = tie_model()
    x = (np.random.default_rng(1).integers(-8, 8, (1, 4, 6, 6)) / 4).astype(np.float32)
    seen = []
    expected = exact_reference.run(model, {"input": x}, seen)
    on_tie = [np.mean(np.abs(v - np.floor(v)) == 0.5) for v in seen[1:]]  # every q1 and output quantizer
    assert len(on_tie) == 2 * len(MODES) and min(on_tie) > 0.1, on_tie  # many values on ties
    onnx.save(model, tmp_path / "ties.onnx")
    meta = compile_file(tmp_path / "ties.onnx", tmp_path / "ties.tar", CompileOptions())
    assert all(layer["kernel"] != "float" for layer in meta["layers"]), meta["layers"]  # the integer path
    got, _ = run_local(tmp_path / "ties.tar", x)
    for mode, value in zip(MODES, got):
        np.testing.assert_array_equal(value.astype(np.float64), expected[mode], err_msg=mode)
    # the modes do disagree at ties: the comparison tells them apart
    assert not np.array_equal(expected["HALF_UP"], expected["HALF_DOWN"])


def test_the_reference_rounds_ties_by_the_mode():
    """The reference itself: ±2.5 and ±3.5 under each mode (a check that it can fail)."""
    y = np.array([-3.5, -2.5, 2.5, 3.5])
    expected = {
        "ROUND": [-4, -2, 2, 4], "HALF_EVEN": [-4, -2, 2, 4], "HALF_UP": [-4, -3, 3, 4],
        "HALF_DOWN": [-3, -2, 2, 3], "UP": [-4, -3, 3, 4], "DOWN": [-3, -2, 2, 3],
        "CEIL": [-3, -2, 3, 4], "FLOOR": [-4, -3, 2, 3],
    }
    for mode in MODES:
        np.testing.assert_array_equal(exact_reference._quant(y, 1.0, 0.0, 8, rounding_mode=mode), expected[mode])
