"""FoldThresholds: binarize(g(float32(acc))), g per-channel float32 scales and shifts of an int32
accumulator, becomes an integer interval test of acc; the intervals are exact (checked against
g evaluated in float32 on every accumulator of a window around each step, and at the ends of
int32), and chains that are not such a g are left alone."""

from functools import partial

import numpy as np
import pytest
import tvm
from tvm import relax

from tvmbits.ops.quantize import binarize, binarize_threshold
from tvmbits.passes.fold_thresholds import BINARIZE, INT32, FoldThresholds, thresholds

SHAPE = (1, 3, 3, 8)


def _module(chain, folded=None):
    """main(acc int32 SHAPE, r float32 SHAPE) → binarize(chain(float32(acc), r)); with `folded`
    (lo, hi), the module FoldThresholds should make of it."""
    bb = relax.BlockBuilder()
    acc = relax.Var("acc", relax.TensorType(SHAPE, "int32"))
    residual = relax.Var("r", relax.TensorType(SHAPE, "float32"))
    with bb.function("main", [acc, residual]):
        with bb.dataflow():
            if folded is None:
                y = chain(bb, bb.emit(relax.op.astype(acc, "float32")), residual)
                codes = bb.emit_te(binarize, y, primfunc_name_hint="binarize", primfunc_attrs={BINARIZE: True})
            else:
                lo, hi = (relax.const(b) for b in folded)
                codes = bb.emit_te(binarize_threshold, acc, lo, hi, primfunc_name_hint="binarize_threshold")
            out = bb.emit_output(codes)
        bb.emit_func_output(out)
    return bb.get()


def _scale_shift(scale, shift):
    return lambda bb, x, _r: bb.emit(relax.op.add(bb.emit(relax.op.multiply(x, relax.const(scale))),
                                                  relax.const(shift)))


def test_batch_norm_after_the_kernel_becomes_integer_thresholds():
    rng = np.random.default_rng(0)
    scale = rng.uniform(-2, 2, (1, 1, 1, 8)).astype(np.float32)
    shift = rng.uniform(-20, 20, (1, 1, 1, 8)).astype(np.float32)
    steps = [(np.multiply, scale, False, "relax.multiply"), (np.add, shift, False, "relax.add")]
    expected = _module(None, thresholds(steps, 8))
    tvm.ir.assert_structural_equal(FoldThresholds(_module(_scale_shift(scale, shift))), expected)


@pytest.mark.parametrize("chain", [
    lambda bb, x, r: bb.emit(relax.op.add(bb.emit(relax.op.multiply(x, relax.const(np.float32(0.5)))), r)),
    _scale_shift(np.array([1, 0, 2, 3, 1, 1, 1, 1], np.float32), np.float32(1)),  # a zero scale
    _scale_shift(np.full(8, np.inf, np.float32), np.float32(1)),
], ids=["residual-add", "zero-scale", "infinite-scale"])
def test_other_chains_are_left_alone(chain):
    before = _module(chain)
    tvm.ir.assert_structural_equal(FoldThresholds(before), before)


def _float32_codes(steps, acc):
    x = acc.astype(np.float32)[:, None]
    with np.errstate(all="ignore"):
        for op, c, constant_first, _ in steps:
            c = np.broadcast_to(c.reshape(-1), (x.shape[1],)).astype(np.float32)[None]
            x = op(c, x) if constant_first else op(x, c)
    return x >= 0


def test_thresholds_match_float32_at_every_step_and_end():
    rng = np.random.default_rng(1)
    channels = 12
    scale = rng.uniform(-3, 3, channels).astype(np.float32)
    scale[:3] = [1e-30, -3e5, 7e-8]  # steps far from 0, and beyond int32
    shift = rng.uniform(-50, 50, channels).astype(np.float32)
    shift[3:6] = [np.inf, -np.inf, np.nan]  # always, never, never (after 3.5 − x and ÷ −0.3)
    steps = [(np.multiply, scale, False, "relax.multiply"), (np.add, shift, False, "relax.add"),
             (lambda c, x: c - x, np.float32(3.5).reshape(1), True, "relax.subtract"),
             (lambda x, c: x / c, np.float32(-0.3).reshape(1), False, "relax.divide")]
    lo, hi = thresholds(steps, channels)
    assert (lo[3], hi[3]) == (INT32.min, INT32.max) and (lo[4:6] > hi[4:6]).all()
    window = np.arange(-6000, 6001, dtype=np.int64)
    ends = np.array([INT32.min, INT32.min + 1, INT32.max - 1, INT32.max], np.int64)
    for c in range(channels):
        near = [b for b in (lo[c], hi[c]) if INT32.min < b < INT32.max]
        acc = np.concatenate([window, ends, *[np.arange(b - 3, b + 4) for b in near]])
        want = _float32_codes([(op, np.asarray(k).reshape(-1)[c % np.asarray(k).size].reshape(1), f, n)
                               for op, k, f, n in steps], acc)[:, 0]
        np.testing.assert_array_equal((lo[c] <= acc) & (acc <= hi[c]), want, err_msg=f"channel {c}")


def test_a_folded_model_equals_onnxruntime():
    """The tiny BNN's first binarized layer feeds the next through Mul/Add by scales that round
    in float32 (and some negative): its binarize folds, and the model still equals ONNX Runtime."""
    import onnx
    from onnx import numpy_helper

    import tvmbits
    from onnx_models import dyadic_input, tiny_bnn
    from test_compile_bnn import onnxruntime_outputs

    model = tiny_bnn()
    rng = np.random.default_rng(3)
    for init in model.graph.initializer:
        if init.name in ("a0", "b0"):
            shape = numpy_helper.to_array(init).shape
            values = rng.uniform(-1.3, 1.3, shape) if init.name == "a0" else rng.uniform(-3.7, 3.7, shape)
            init.CopyFrom(numpy_helper.from_array(values.astype(np.float32), init.name))
    onnx.checker.check_model(model)
    compiled = tvmbits.load(tvmbits.compile(model, "x86_64", use_tuning=False))
    for seed in range(3):
        x = dyadic_input([1, 3, 9, 9], seed=seed)
        got = compiled(input=x)
        np.testing.assert_array_equal(got[model.graph.output[0].name], onnxruntime_outputs(model, x)[0])
    names = [row["name"] for row in compiled.profile({"input": x}, runs=1)]
    assert any("binarize_threshold" in name and "bitserial_conv2d" in name for name in names), names
