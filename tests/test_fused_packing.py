"""Each binarized layer's result is packed for the next layer inside the layer's own kernel
(`FusePacking`, `schedules/cpu.py`): on odd and whole-word channel counts, stride 2, bipolar
data padded by the conv, a residual add between two binarized layers, and a result also read
as float (a graph output), the compiled model still equals ONNX Runtime exactly, and only the
first binarized layer's input (the float stem's result) is packed by a function of its own."""

import numpy as np
import onnx
import pytest
import tvm
from tvm import s_tir

import tvmbits
from tvmbits.compiler import CompileOptions, plan_model
from tvmbits.passes import pipeline
from tvmbits.schedules.cpu import schedule_lowbit
from onnx_models import dyadic_input, residual_bnn
from test_compile_bnn import onnxruntime_outputs


@pytest.mark.parametrize("channels, kernel", [(64, "auto"), (60, "auto"), (40, "auto"), (64, "subbyte")],
                         ids=["whole-words", "60", "40", "subbyte"])
def test_fused_chains_equal_onnxruntime(channels, kernel):
    model = residual_bnn(channels=channels, size=9)
    onnx.checker.check_model(model)
    compiled = tvmbits.load(tvmbits.compile(model, "x86_64", kernel=kernel, use_tuning=False))
    x = dyadic_input([1, 3, 9, 9], seed=2)
    got = compiled(input=x)
    for name, want in zip(["output", "r0"], onnxruntime_outputs(model, x)):
        np.testing.assert_array_equal(got[name], want)
    names = [row["name"] for row in compiled.profile({"input": x}, runs=1)]
    packing = [name for name in names if "bitpack" in name or "subbyte_pack" in name]
    merged = [name for name in packing if "conv2d" in name]
    assert len(packing) == 3 and len(merged) == 2, names  # the stem's result packed on its own


def test_layout_changes_only_at_the_edges():
    """A Conv with a bias input (the stem here) is imported as conv2d + add: the layer stays NHWC
    with its bias add and the residual add after it, leaving one transpose per model input and
    output (`inspect`'s layout_transposes; the importer once bound the layer's name to an alias
    of the conv, which ConvertLayout kept NCHW, 7 transposes in this model)."""
    art = tvmbits.compile(residual_bnn(channels=64, size=9), "x86_64", use_tuning=False)
    assert art.metadata["layout_transposes"] == 3  # the input, the two outputs


def test_producers_write_the_zero_padded_input_each_conv_reads():
    """Where a binarized conv reads its input zero-padded (its output large enough for the border
    table: both 3×3 layers at 16×16), the packing that produces the input writes it so, filling
    the zero words in one flat loop, and the conv's own function makes no padded copy: the stem's
    result packed by a function of its own, the first layer's in its kernel; the third layer
    (no padding) reads the plain packing. The outputs still equal ONNX Runtime's."""
    model = residual_bnn(channels=64, size=16)
    planned = plan_model(model, CompileOptions(target="x86_64", use_tuning=False))
    kernels = pipeline.run(planned.mod, pipeline.kernel_phases(planned.target))
    unscheduled = {gv.name_hint: func for gv, func in kernels.functions.items()}  # (Schedule updates `kernels`)
    mod = pipeline.Schedule(planned.target)(kernels)
    funcs = {gv.name_hint: func for gv, func in mod.functions.items() if isinstance(func, tvm.tirx.PrimFunc)}
    scripts = {name: func.script() for name, func in funcs.items()}
    convs = [name for name, script in scripts.items() if 'T.sblock("bitserial_conv2d_update")' in script]
    assert len(convs) == 3 and not any("bitserial_pad" in scripts[name] for name in convs)
    padded = [name for name, script in scripts.items() if 'T.sblock("bitpack_pad_const")' in script]
    assert sorted("conv2d" in name for name in padded) == [False, True], padded
    for name in padded:
        packed = [int(d) for d in funcs[name].params[-1].ty.shape]
        assert packed == [1, 18, 18, 1, 2] and "T.if_then_else" not in scripts[name]
        # `tvmbits tune`'s design space over the function prints as a trace (MetaSchedule prints them)
        sch = s_tir.Schedule(unscheduled[name])
        with planned.target:
            assert schedule_lowbit(sch, planned.target, tunable=True)
        assert "decompose_padding" not in str(sch.trace)
    compiled = tvmbits.load(tvmbits.compile(model, "x86_64", use_tuning=False))
    x = dyadic_input([1, 3, 16, 16], seed=3)
    got = compiled(input=x)
    for name, want in zip(["output", "r0"], onnxruntime_outputs(model, x)):
        np.testing.assert_array_equal(got[name], want)
