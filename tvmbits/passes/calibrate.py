"""Activation encodings and scales for post-training quantized layers, from sample inputs.

The float module runs on the samples with the data of every layer awaiting calibration as
extra outputs. A layer input whose minimum over all samples is ≥ 0 (after ReLU) becomes
unsigned k-bit with scale max/(2^k−1); otherwise 1 bit becomes bipolar with scale mean|x|
and k ≥ 2 bits signed narrow range with scale max|x|/(2^(k−1)−1).
"""

import numpy as np
import tvm
from tvm import relax

from tvmbits.ops.encoding import Encoding
from tvmbits.passes.layer_plan import LayerPlan


def needs_calibration(plans: list[LayerPlan]) -> list[LayerPlan]:
    return [plan for plan in plans if plan.origin == "post-training" and plan.act is None]


def calibrate(mod: tvm.IRModule, plans: list[LayerPlan], samples: list[list[np.ndarray]]) -> None:
    """Fill `act`, `act_scale` and the kernel of each plan awaiting calibration.

    `samples` holds one list of arrays (the module's inputs in order) per sample.
    """
    pending = needs_calibration(plans)
    if not pending:
        return
    probe = _with_layer_inputs_as_outputs(mod, [plan.layer.call.args[0] for plan in pending])
    vm = relax.VirtualMachine(tvm.compile(probe, target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    lows = [np.inf] * len(pending)
    highs = [0.0] * len(pending)
    abs_sums = [0.0] * len(pending)
    counts = [0] * len(pending)
    for inputs in samples:
        outputs = vm["main"](*[tvm.runtime.tensor(a) for a in inputs])
        for i in range(len(pending)):
            data = outputs[i].numpy().astype(np.float64)
            lows[i] = min(lows[i], data.min())
            highs[i] = max(highs[i], np.abs(data).max())
            abs_sums[i] += np.abs(data).sum()
            counts[i] += data.size
    for i, plan in enumerate(pending):
        bits = plan.act_bits
        if lows[i] >= 0:
            plan.act = Encoding("unsigned", bits)
            plan.act_scale = _nonzero(highs[i] / (2**bits - 1))
        elif bits == 1:
            plan.act = Encoding("bipolar", 1)
            plan.act_scale = _nonzero(abs_sums[i] / counts[i])
        else:
            plan.act = Encoding("signed", bits)
            plan.act_scale = _nonzero(highs[i] / (2 ** (bits - 1) - 1))
        plan.choose_kernel()


def _nonzero(scale: float) -> float:
    return float(np.float32(scale)) if scale > 0 else 1.0


def _with_layer_inputs_as_outputs(mod: tvm.IRModule, exprs: list[relax.Expr]) -> tvm.IRModule:
    mod = relax.transform.ToNonDataflow()(mod)
    func = mod["main"]
    # ToNonDataflow keeps the variables' identities apart from their kind: find them by name.
    by_name = {b.var.name: b.var for block in func.body.blocks for b in block.bindings}
    by_name.update({p.name: p for p in func.params})
    fields = [by_name[e.name] for e in exprs]
    body = relax.BlockBuilder().normalize(relax.SeqExpr(func.body.blocks, relax.Tuple(fields)))
    new = relax.Function(func.params, body, None, func.is_pure, func.attrs)
    return tvm.IRModule({"main": new})
