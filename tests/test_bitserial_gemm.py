"""The AND-popcount GEMM form of the bit-serial kernels (`ops/bitserial_gemm.py`, what the CUDA
schedules tensorize) agrees bit-exactly with the int64 reference, built for this CPU unscheduled:
its numbers do not depend on a GPU."""

import functools
import zlib

import numpy as np
import pytest
import tvm
from conv_cases import BIPOLAR, CONVS, DENSES, SMALL, grid, pair_id, pairs
from lowbit_kernels import random_codes, upstream
from tvm import te

from tvmbits.ops import reference
from tvmbits.ops.bitpack import bitpack, pack_bits
from tvmbits.ops.bitserial_conv2d import window_offset
from tvmbits.ops.bitserial_dense import row_offset
from tvmbits.ops.bitserial_gemm import bitserial_conv2d_gemm, bitserial_dense_gemm, weight_sums
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.window import Window

pytestmark = pytest.mark.kernel

WIDER = [
    (Encoding("unsigned", 3), Encoding("signed", 4)),
    (Encoding("signed", 4), BIPOLAR),
    (BIPOLAR, Encoding("unsigned", 3)),
]


@functools.cache
def _build(a_shape, w_shape, act, wgt, conv_args, separate):
    codes = te.placeholder(a_shape, "int32", "codes")
    weight = te.placeholder(w_shape, "uint32", "weight")
    packed = bitpack(codes, act.bits)
    channels = a_shape[-1]
    given = {}
    if separate and wgt.offset:  # as LowerLowBit passes them on CUDA targets
        given["offset"] = (window_offset(packed, channels, act, wgt, w_shape[1:3], *conv_args) if conv_args
                           else row_offset(packed, channels, act, wgt))
    if separate and act.offset:
        window = Window.of(a_shape[1:3], w_shape[1:3], *conv_args) if conv_args else None
        given["weight_term"] = weight_sums(weight, act, wgt, window)
    if conv_args:
        out = bitserial_conv2d_gemm(packed, weight, channels, act, wgt, *conv_args, **given)
    else:
        out = bitserial_dense_gemm(packed, weight, channels, act, wgt, **given)
    mod = tvm.IRModule({"main": te.create_prim_func([codes, weight, out])})
    return tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tuple(int(d) for d in out.shape)


def run(a, w, act, wgt, *conv_args, separate=True):
    w_packed = pack_bits(w, wgt.bits)
    func, shape = _build(a.shape, w_packed.shape, act, wgt, tuple(tuple(x) for x in conv_args), separate)
    out = tvm.runtime.tensor(np.zeros(shape, "int32"))
    func(tvm.runtime.tensor(upstream(act, a)), tvm.runtime.tensor(w_packed), out)
    return out.numpy()


@pytest.mark.parametrize("conv, pair", grid(CONVS, pairs(SMALL) + WIDER))
def test_conv2d_gemm_matches_reference(conv, pair):
    act, wgt = pair
    rng = np.random.default_rng(zlib.crc32(f"{conv}{pair_id(pair)}".encode()))
    a = random_codes(rng, act, (conv.batch, *conv.size, conv.channels))
    w = random_codes(rng, wgt, (conv.out_channels, *conv.kernel, conv.channels))
    expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), conv.strides, conv.padding)
    np.testing.assert_array_equal(run(a, w, act, wgt, conv.strides, conv.padding), expected)


@pytest.mark.parametrize("pair", [(BIPOLAR, BIPOLAR), (Encoding("signed", 3), BIPOLAR), (BIPOLAR, Encoding("signed", 2))],
                         ids=pair_id)
def test_conv2d_gemm_sums_the_pixel_and_weight_terms_itself(pair):
    act, wgt = pair
    conv = CONVS[1]
    rng = np.random.default_rng(5)
    a = random_codes(rng, act, (conv.batch, *conv.size, conv.channels))
    w = random_codes(rng, wgt, (conv.out_channels, *conv.kernel, conv.channels))
    expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), conv.strides, conv.padding)
    got = run(a, w, act, wgt, conv.strides, conv.padding, separate=False)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape, pair", grid(DENSES + [(3, 300, 20)], pairs(SMALL) + WIDER))
def test_dense_gemm_matches_reference(shape, pair):
    act, wgt = pair
    batch, features, out_features = shape
    rng = np.random.default_rng(11)
    a = random_codes(rng, act, (batch, features))
    w = random_codes(rng, wgt, (out_features, features))
    expected = reference.dense(act.decode(a), wgt.decode(w))
    np.testing.assert_array_equal(run(a, w, act, wgt), expected)
    np.testing.assert_array_equal(run(a, w, act, wgt, separate=False), expected)
