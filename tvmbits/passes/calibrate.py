"""Calibrate: activation encodings and scales for post-training quantized layers, from samples.

The module runs on the samples (float, as planned so far) with the data of every layer awaiting
calibration as extra outputs. A layer input whose minimum over all samples is ≥ 0 (after ReLU)
becomes unsigned k-bit with scale max/(2^k−1); otherwise 1 bit becomes bipolar with scale
mean|x| and k ≥ 2 bits signed narrow range with scale max|x|/(2^(k−1)−1). The plan, with its
kernel chosen, goes back into the layer function's attributes.

Only layers called from `main` can be calibrated (the samples are `main`'s inputs); a layer
awaiting calibration elsewhere stays float, with that reason.
"""

from typing import Callable

import numpy as np
import tvm
from tvm import relax

from tvmbits.ops.encoding import Encoding
from tvmbits.passes.layer_plan import LayerPlan, is_planned


def _pending(mod: tvm.IRModule) -> dict:
    """GlobalVar → plan of every layer function that awaits calibration."""
    plans = {gvar: LayerPlan.of(func) for gvar, func in mod.functions.items() if is_planned(func)}
    return {gvar: plan for gvar, plan in plans.items() if plan.kernel == "pending" and plan.act is None}


def Calibrate(samples: Callable[[], list[list[np.ndarray]]]) -> tvm.transform.Pass:  # noqa: N802
    """The pass; `samples()` gives one list of arrays (main's inputs in order) per sample, and
    is called only when some layer awaits calibration."""

    @tvm.transform.module_pass(opt_level=0, name="tvmbits.Calibrate")
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        plans = _pending(mod)
        if not plans:
            return mod
        calls = _calls_in_main(mod, set(plans))
        ranges = _ranges(mod, [calls[gvar] for gvar in plans if gvar in calls], samples())
        builder = relax.BlockBuilder(mod)
        for gvar, plan in plans.items():
            if gvar in calls:
                _fill(plan, *ranges.pop(0))
            else:
                plan.kernel, plan.reason = "float", "awaits calibration but is not called from main"
            builder.update_func(gvar, mod[gvar].with_attrs(plan.to_attrs()))
        return builder.get()

    return transform


def _fill(plan: LayerPlan, low: float, high: float, mean_abs: float) -> None:
    bits = plan.act_bits
    if low >= 0:
        plan.act = Encoding("unsigned", bits)
        plan.act_scale = _nonzero(high / (2**bits - 1))
    elif bits == 1:
        plan.act = Encoding("bipolar", 1)
        plan.act_scale = _nonzero(mean_abs)
    else:
        plan.act = Encoding("signed", bits)
        plan.act_scale = _nonzero(high / (2 ** (bits - 1) - 1))
    plan.choose_kernel()


def _nonzero(scale: float) -> float:
    return float(np.float32(scale)) if scale > 0 else 1.0


def _calls_in_main(mod: tvm.IRModule, gvars: set) -> dict:
    """GlobalVar → the data argument (a variable of main) of its call in main."""
    found = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op in gvars:
                found[value.op] = value.args[0]
    return found


def _ranges(mod: tvm.IRModule, exprs: list, samples) -> list[tuple[float, float, float]]:
    """(minimum, maximum |x|, mean |x|) of each expression of main over all samples."""
    probe = _with_outputs(mod, exprs)
    vm = relax.VirtualMachine(tvm.compile(probe, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    lows, highs, sums, counts = [np.inf] * len(exprs), [0.0] * len(exprs), [0.0] * len(exprs), [0] * len(exprs)
    for inputs in samples:
        outputs = vm["main"](*[tvm.runtime.tensor(a) for a in inputs])
        for i in range(len(exprs)):
            data = outputs[i].numpy().astype(np.float64)
            lows[i] = min(lows[i], data.min())
            highs[i] = max(highs[i], np.abs(data).max())
            sums[i] += np.abs(data).sum()
            counts[i] += data.size
    return [(lows[i], highs[i], sums[i] / counts[i]) for i in range(len(exprs))]


def _with_outputs(mod: tvm.IRModule, exprs: list) -> tvm.IRModule:
    """`mod` whose main returns `exprs` (variables of main) instead of its outputs."""
    positions = _positions(mod["main"])
    where = [positions[expr] for expr in exprs]
    mod = relax.transform.ToNonDataflow()(mod)  # the dataflow variables become returnable
    func = mod["main"]
    variables = {position: var for var, position in _positions(func).items()}
    body = relax.BlockBuilder().normalize(relax.SeqExpr(func.body.blocks, relax.Tuple([variables[w] for w in where])))
    builder = relax.BlockBuilder(mod)
    builder.update_func(mod.get_global_var("main"), relax.Function(func.params, body, None, func.is_pure, func.attrs))
    return builder.get()


def _positions(func: relax.Function) -> dict:
    """Variable → where it is bound: ("param", i) or (block, binding)."""
    positions = {param: ("param", i) for i, param in enumerate(func.params)}
    for i, block in enumerate(func.body.blocks):
        for j, binding in enumerate(block.bindings):
            positions[binding.var] = (i, j)
    return positions
