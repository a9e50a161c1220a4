"""PlanLayers on the IR it produces: each layer function gets its plan as attributes, and
nothing else changes; a plan survives passes that rebuild the module."""

import numpy as np
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvmbits.passes.layer_plan import LayerPlan
from tvmbits.passes.plan_layers import PlanLayers


RNG = np.random.default_rng(0)
SCALES = np.array([0.5, 0.25, 1.0, 0.125], np.float32)
W_BINARY = (np.where(RNG.random((4, 3, 3, 2)) < 0.5, -1, 1) * SCALES.reshape(4, 1, 1, 1)).astype(np.float32)
W_FLOAT = RNG.standard_normal((3, 1, 1, 4)).astype(np.float32)


def planned_attrs(name, op, **plan):
    base = {"kernel": "float", "origin": "float", "reason": "", "act": "", "act_bits": 0, "act_scale": 1.0,
            "act_zero_point": 0, "wgt": "", "weight_scale": [], "forced_kernel": "auto", "bitserial_pairs": 4, "found": ""}
    base.update(plan)
    return {"tvmbits.layer": name, "tvmbits.op": op, **{f"tvmbits.plan.{k}": v for k, v in base.items()}}


@I.ir_module
class Before:
    @R.function(private=True)
    def layer_b(data: R.Tensor((1, 5, 5, 2), "float32")) -> R.Tensor((1, 5, 5, 4), "float32"):
        R.func_attr({"tvmbits.layer": "b", "tvmbits.op": "conv2d"})
        with R.dataflow():
            s = R.sign(data)
            gv = R.nn.conv2d(s, R.const(W_BINARY), padding=[1, 1, 1, 1], data_layout="NHWC", kernel_layout="OHWI")
            R.output(gv)
        return gv

    @R.function(private=True)
    def layer_f(data: R.Tensor((1, 5, 5, 4), "float32")) -> R.Tensor((1, 5, 5, 3), "float32"):
        R.func_attr({"tvmbits.layer": "f", "tvmbits.op": "conv2d"})
        with R.dataflow():
            gv = R.nn.conv2d(data, R.const(W_FLOAT), data_layout="NHWC", kernel_layout="OHWI")
            R.output(gv)
        return gv

    @R.function
    def main(x: R.Tensor((1, 5, 5, 2), "float32")) -> R.Tensor((1, 5, 5, 3), "float32"):
        cls = Before
        with R.dataflow():
            a = cls.layer_b(x)
            y = cls.layer_f(a)
            R.output(y)
        return y


def expected(b_attrs: dict, f_attrs: dict) -> tvm.IRModule:
    mod = Before.clone() if hasattr(Before, "clone") else tvm.IRModule(dict(Before.functions), attrs=Before.attrs)
    builder = relax.BlockBuilder(mod)
    for name, attrs in (("layer_b", b_attrs), ("layer_f", f_attrs)):
        gvar = mod.get_global_var(name)
        builder.update_func(gvar, mod[gvar].with_attrs(attrs))
    return builder.get()


def test_binarized_layer_and_float_layer():
    after = PlanLayers()(Before)
    b = planned_attrs("b", "conv2d", kernel="bitserial", origin="binarized", act="bipolar1", wgt="bipolar1",
                      weight_scale=[0.5, 0.25, 1.0, 0.125])
    f = planned_attrs("f", "conv2d", reason="float in the model (give --wbits/--abits to quantize)")
    tvm.ir.assert_structural_equal(after, expected(b, f))


def test_post_training_bits_and_forced_kernel():
    after = PlanLayers(wbits=2, abits=2, all_layers=True, kernel="subbyte", bitserial_pairs=2)(Before)
    # a layer binarized in the graph stays exactly that; the forced kernel still applies
    b = planned_attrs("b", "conv2d", kernel="subbyte", origin="binarized", act="bipolar1", wgt="bipolar1",
                      weight_scale=[0.5, 0.25, 1.0, 0.125], forced_kernel="subbyte", bitserial_pairs=2)
    scale = [float(s) for s in np.abs(W_FLOAT.reshape(3, -1)).max(axis=1).astype(np.float32)]
    f = planned_attrs("f", "conv2d", kernel="pending", origin="post-training", act_bits=2, wgt="signed2",
                      weight_scale=scale, forced_kernel="subbyte", bitserial_pairs=2)
    tvm.ir.assert_structural_equal(after, expected(b, f))


def test_edge_layers_follow_the_model_order():
    after = PlanLayers(wbits=2, abits=2, order=["f", "x", "b"])(Before)
    reasons = {plan.name: plan.reason for plan in map(LayerPlan.of, _layer_functions(after))}
    assert reasons == {"b": "", "f": "first/last layer stays float (--all-layers to quantize it)"}


def test_plans_survive_a_pass_that_rebuilds_the_module():
    planned = PlanLayers()(Before)
    rebuilt = tvm.transform.Sequential([relax.transform.Normalize(), relax.transform.FoldConstant()])(planned)
    plans = {plan.name: plan for plan in map(LayerPlan.of, _layer_functions(rebuilt))}
    assert plans["b"].kernel == "bitserial" and plans["f"].kernel == "float"
    np.testing.assert_array_equal(plans["b"].weight_values, np.where(W_BINARY >= 0, 1, -1))


def _layer_functions(mod):
    return [func for func in mod.functions.values() if func.attrs is not None and "tvmbits.layer" in func.attrs]
