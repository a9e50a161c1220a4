"""One low-bit layer as standalone functions for a profile, its seeded inputs and its reference.

The layer is rebuilt alone in a Relax module, `main(x) = conv2d(x, W)` (NHWC/OHWI) or
`matmul(x, Wᵀ)`, x the layer's float input, and lowered, fused and scheduled by the compiler's
own passes (a layer function carrying the plan, then `pipeline.build_phases`: LowerLowBit,
UnpackAtLoad, Fuse, Schedule): binarize or quantize, the packing op, and the kernel with its
fused epilogue (activation zero-point correction, the float32 scale). What `prepare` (the
weights' unpacking) and then `main` call is a straight list of PrimFuncs; they are built for
the profile as one library and the list becomes a `Program`, which `emulator.run` executes on
the emulated CPU.

The seeded input holds values of the layer's activation encoding, v · act_scale in float32 for
v − act_zero_point (so quantize gives v back exactly); the reference is
float32(reference.conv2d_nhwc|dense(v − z, weight_values)) · float32(act_scale · weight_scale),
what the compiled layer must equal (a float32 epilogue: within 1 ulp).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from tvmbits.errors import TargetError
from tvmbits.ops import reference
from tvmbits.passes import pipeline
from tvmbits.passes.layer_plan import LayerPlan
from tvmbits.passes.layers import NAME, OP
from tvmbits.passes.unpack_at_load import PREPARE


@dataclass
class Program:
    """Calls of one layer's functions: `tensors[i]` is an input (numpy array), a constant, or an
    intermediate/output (a (shape, dtype) to allocate); `calls` are (function, tensor indices)."""

    library: Path
    tensors: list
    calls: list[tuple[str, list[int]]]
    input: int
    output: int


def layer_input(plan: LayerPlan, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 input of the layer, int64 values the activation encoding gives it)."""
    shape = tuple(int(d) for d in plan.layer.call.args[0].ty.shape)
    rng = np.random.default_rng(seed)
    lo, hi = plan.act.value_range
    if plan.act.kind == "bipolar":
        values = rng.choice(np.array([-1, 1]), size=shape)
        return values.astype(np.float32), values.astype(np.int64)
    values = rng.integers(lo, hi + 1, size=shape)
    # quantize(x) = clamp(round(x / act_scale) + z): x = (v − z) · act_scale gives v back
    x = ((values - plan.act_zero_point) * np.float64(plan.act_scale)).astype(np.float32)
    return x, values


def expected(plan: LayerPlan, values: np.ndarray) -> np.ndarray:
    """The layer's float32 output from the integer reference."""
    a = values - plan.act_zero_point
    if plan.layer.op == "conv2d":
        acc = reference.conv2d_nhwc(a, plan.weight_values, plan.layer.attrs["strides"], plan.layer.attrs["padding"])
    else:
        acc = reference.dense(a, plan.weight_values)
    scale = (np.float64(plan.act_scale) * plan.weight_scale).astype(np.float32)
    return acc.astype(np.float32) * scale


def build(plan: LayerPlan, profile, target: tvm.target.Target, library: Path) -> Program:
    """Lower `plan`'s layer alone, build its functions for `target` into `library` with the
    profile's cross compiler, and return the program that runs them."""
    mod = pipeline.run(_alone(plan), pipeline.build_phases(target))
    tensors, calls, output = _call_list(mod, plan.name)
    # exported as `__tvm_ffi_<name>` (the Relax build's AttachGlobalSymbol does this in a model)
    kernels = tvm.IRModule({
        gv: func.with_attr("global_symbol", gv.name_hint)
        for gv, func in mod.functions.items() if isinstance(func, tvm.tirx.PrimFunc)
    })
    with target:
        executable = tvm.compile(kernels, target=target, tir_pipeline=pipeline.TIR_PIPELINE)
    try:
        executable.export_library(str(library), fcompile=tvm.support.cc.cross_compiler(profile.cross_compiler))
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TargetError(f"linking the kernels of layer {plan.name} for {profile.name} failed: {first}") from None
    return Program(library, tensors, calls, 0, output)


def _call_list(mod: tvm.IRModule, name: str) -> tuple[list, list, int]:
    """(tensors, calls, output index) of a lowered layer whose `prepare` and `main` are straight
    lines of call_tir bindings: `prepare`'s calls (unpacking weights) first, then `main`'s, which
    takes `prepare`'s results after its input; tensor 0 is main's input."""
    main, prepare = mod["main"], mod[PREPARE]
    tensors: list = [None]
    index = {main.params[0]: 0}
    calls: list = []
    for func in (prepare, main):
        for block in func.body.blocks:
            for binding in block.bindings:
                _add_call(binding, index, tensors, calls, name)
        if func is prepare:
            index.update(zip(main.params[1:], (index[field] for field in prepare.body.body.fields)))
    return tensors, calls, index[main.body.body]


def _add_call(binding, index: dict, tensors: list, calls: list, name: str) -> None:
    """Append `binding`'s call_tir to `calls` (its constants and result to `tensors`), or alias
    its variable when it binds one."""
    value = binding.value
    if isinstance(value, relax.Var) and value in index:
        index[binding.var] = index[value]
        return
    if not (isinstance(value, relax.Call) and value.op.name == "relax.call_tir"):
        raise NotImplementedError(f"layer {name}: the lowered layer computes {value.op} outside a kernel")
    gvar, args = value.args[0], value.args[1].fields
    ids = []
    for arg in args:
        if isinstance(arg, tvm.ir.expr.Constant):
            tensors.append(arg.value.numpy())
            ids.append(len(tensors) - 1)
        else:
            ids.append(index[arg])
    tensors.append(_allocation(binding.var))
    index[binding.var] = len(tensors) - 1
    calls.append((gvar.name_hint, ids + [index[binding.var]]))


def _allocation(var: relax.Var) -> tuple[tuple[int, ...], str]:
    ty = var.ty
    return tuple(int(d) for d in ty.shape), str(ty.dtype)


def _alone(plan: LayerPlan) -> tvm.IRModule:
    """A module whose main only calls `plan`'s layer, as a layer function holding the plan, on
    a float input of the layer's values (no Sign before it: bipolar data is ±1 already)."""
    layer = plan.layer
    shape = [int(d) for d in layer.call.args[0].ty.shape]
    if layer.op == "conv2d":
        weight = relax.const(layer.weight.astype(np.float32))
        call = lambda data: relax.op.nn.conv2d(  # noqa: E731
            data, weight, strides=layer.attrs["strides"], padding=layer.attrs["padding"],
            data_layout="NHWC", kernel_layout="OHWI",
        )
    else:
        weight = relax.const(np.ascontiguousarray(layer.weight.T).astype(np.float32))
        call = lambda data: relax.op.matmul(data, weight)  # noqa: E731
    builder = relax.BlockBuilder()
    data = relax.Var("data", relax.TensorType(shape, "float32"))
    with builder.function("layer", [data], attrs={NAME: plan.name, OP: layer.op, **plan.to_attrs()}, private=True):
        with builder.dataflow():
            out = builder.emit_output(call(data))
        builder.emit_func_output(out)
    layer_function = builder.get()["layer"]
    builder = relax.BlockBuilder()
    gvar = builder.add_func(layer_function, "layer")
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit_output(relax.Call(gvar, [x]))
        builder.emit_func_output(y)
    return builder.get()
