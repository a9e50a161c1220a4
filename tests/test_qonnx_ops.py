"""QONNX Quant / BipolarQuant / Trunc nodes, written by hand: the compiled float graph equals
the qonnx package's reference executor bit for bit, for every attribute combination and
rounding mode (inputs include exact ties); malformed attributes are one-line errors naming
the node."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiled import compile_file, run_local
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from tvmbits.cli import main
from tvmbits.compiler import CompileOptions
from tvmbits.errors import UserError

DOMAIN = "qonnx.custom_op.general"
SHAPE = [2, 3, 4, 5]
ROUNDING = ["ROUND", "HALF_EVEN", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN"]


def qonnx_model(nodes, initializers, outputs, domain=DOMAIN, domain_version=2):
    graph = helper.make_graph(
        nodes,
        "q",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, SHAPE) for name in outputs],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in initializers.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(domain, domain_version)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def quant(name, scale, zero, bits, domain=DOMAIN, op="Quant", **attrs):
    """A Quant of 'input' whose parameters are initializers named after the node."""
    init = {f"{name}_s": scale, f"{name}_z": zero, f"{name}_b": bits}
    node = helper.make_node(op, ["input", *init], [name], name=name, domain=domain, **attrs)
    return node, init


def ties(scale):
    """Values around and exactly on every rounding tie of the grid, both signs."""
    steps = np.arange(-30, 30) / 4  # multiples of 1/4: k, k ± ½ and in between
    values = np.resize(steps, int(np.prod(SHAPE))).reshape(SHAPE)
    return (values * scale).astype(np.float32)


def compile_and_compare(tmp_path, model, x):
    onnx.save(model, tmp_path / "q.onnx")
    compile_file(tmp_path / "q.onnx", tmp_path / "q.tar", CompileOptions())
    out, _ = run_local(tmp_path / "q.tar", x)
    outs = out if isinstance(out, tuple) else (out,)
    expected = execute_onnx(ModelWrapper(model), {"input": x})
    for value, output in zip(outs, model.graph.output):
        np.testing.assert_array_equal(value, expected[output.name], err_msg=output.name)


def test_quant_attributes_and_rounding_modes_equal_qonnx(tmp_path):
    nodes, init = [], {}
    cases = [(mode, 1, 0, 4) for mode in ROUNDING]
    cases += [("ROUND", signed, narrow, bits) for signed in (0, 1) for narrow in (0, 1) for bits in (2, 3, 8)]
    cases += [("ROUND", 1, 0, 1), ("ROUND", 1, 1, 1)]  # 1-bit signed: bipolar
    for i, (mode, signed, narrow, bits) in enumerate(cases):
        zero = 1.0 if i % 3 == 0 and bits > 1 else 0.0
        node, params = quant(f"q{i}", 0.375, zero, bits, rounding_mode=mode, signed=signed, narrow=narrow)
        nodes.append(node)
        init.update(params)
    nodes.append(helper.make_node("BipolarQuant", ["input", "bp_s"], ["bp"], name="bp", domain=DOMAIN))
    init["bp_s"] = np.array([0.5, 1.0, 2.0], np.float32).reshape(1, 3, 1, 1)  # per channel
    model = qonnx_model(nodes, init, [n.output[0] for n in nodes])
    x = ties(0.375) * 3
    x[0, 0, 0, :3] = [0.0, -0.0, 1e-9]  # BipolarQuant / 1-bit Quant: x ≥ 0 → +1
    compile_and_compare(tmp_path, model, x)


def test_per_channel_scales_and_the_brevitas_domain(tmp_path):
    scale = np.array([0.25, 0.5, 0.125], np.float32).reshape(1, 3, 1, 1)
    node, init = quant("pc", scale, 0.0, 3, domain="onnx.brevitas", signed=1, narrow=1)
    model = qonnx_model([node], init, ["pc"], domain="onnx.brevitas", domain_version=1)
    compile_and_compare(tmp_path, model, ties(0.3))


def test_trunc_v1_and_v2_equal_qonnx(tmp_path):
    """Every rounding mode, as one output each of one model per Trunc version."""
    init = {"s": 0.125, "z": 0.0, "ib": 8.0, "os": 0.5, "ob": 4.0}
    modes = ["FLOOR", "ROUND", "HALF_UP"]
    v2 = [helper.make_node("Trunc", ["input", "s", "z", "ib", "os", "ob"], [f"t2_{mode}"], name=f"t2_{mode}",
                           domain=DOMAIN, rounding_mode=mode, signed=1, narrow=0) for mode in modes]
    v1 = [helper.make_node("Trunc", ["input", "s", "z", "ib", "ob"], [f"t1_{mode}"], name=f"t1_{mode}",
                           domain=DOMAIN, rounding_mode=mode) for mode in modes]
    # qonnx picks Trunc's version from the domain's opset import: one model per version
    compile_and_compare(tmp_path, qonnx_model(v2, init, [n.output[0] for n in v2], domain_version=2), ties(0.125) * 6)
    del init["os"]
    compile_and_compare(tmp_path, qonnx_model(v1, init, [n.output[0] for n in v1], domain_version=1), ties(0.125) * 6)


@pytest.mark.parametrize(
    "params,attrs,fragment",
    [
        ((0.5, 0.0, 0.0), {}, "bitwidth must be a positive integer, got 0"),
        ((0.5, 0.0, 2.5), {}, "bitwidth must be a positive integer, got 2.5"),
        ((0.5, 0.0, np.nan), {}, "bitwidth must be a positive integer, got nan"),
        ((np.inf, 0.0, 4.0), {}, "scale must be positive and finite, got inf"),
        ((-0.5, 0.0, 4.0), {}, "scale must be positive and finite, got -0.5"),
        ((0.0, 0.0, 4.0), {}, "scale must be positive and finite, got 0"),
        ((0.5, 8.0, 4.0), {"signed": 1, "narrow": 0}, "zero point must be an integer in -8..7, got 8"),
        ((0.5, 16.0, 4.0), {"signed": 0, "narrow": 0}, "zero point must be an integer in 0..15, got 16"),
        ((0.5, 0.5, 4.0), {}, "zero point must be an integer"),
        ((0.5, 0.0, 4.0), {"rounding_mode": "NEAREST"}, "unknown rounding_mode NEAREST"),
        ((0.5, 0.0, 4.0), {"narrow": 2}, "attribute narrow=2 must be 0 or 1"),
    ],
)
def test_malformed_quant_is_one_line_error_naming_the_node(tmp_path, capsys, params, attrs, fragment):
    node, init = quant("act_quant_7", *params, **attrs)
    onnx.save(qonnx_model([node], init, ["act_quant_7"]), tmp_path / "bad.onnx")
    with pytest.raises(UserError, match="node 'act_quant_7' \\(Quant\\)") as err:
        compile_file(tmp_path / "bad.onnx", tmp_path / "bad.tar", CompileOptions())
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert main(["compile", str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "bad.tar")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("tvmbits: error: ") and "act_quant_7" in lines[-1] and len(lines) <= 2


def test_bipolar_quant_with_nonpositive_scale_is_an_error(tmp_path):
    node = helper.make_node("BipolarQuant", ["input", "s"], ["b"], name="sign_act", domain=DOMAIN)
    onnx.save(qonnx_model([node], {"s": -1.0}, ["b"]), tmp_path / "bad.onnx")
    with pytest.raises(UserError, match="node 'sign_act' \\(BipolarQuant\\): scale must be positive"):
        compile_file(tmp_path / "bad.onnx", tmp_path / "bad.tar", CompileOptions())


def test_other_qonnx_ops_are_named_in_one_line(tmp_path, capsys):
    node = helper.make_node("MultiThreshold", ["input", "t"], ["m"], name="thresholds", domain=DOMAIN)
    onnx.save(qonnx_model([node], {"t": np.zeros((3, 1), np.float32)}, ["m"]), tmp_path / "mt.onnx")
    assert main(["compile", str(tmp_path / "mt.onnx"), "-o", str(tmp_path / "mt.tar")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "node 'thresholds' uses op MultiThreshold (domain qonnx.custom_op.general)" in line
