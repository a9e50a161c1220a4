"""The byte GEMM form of the sub-byte kernels (`ops/subbyte_gemm.py`, what the CUDA schedules
tensorize into the integer MMA) agrees bit-exactly with the int64 reference, built for this CPU
unscheduled: its numbers do not depend on a GPU."""

import functools
import zlib

import numpy as np
import pytest
import tvm
from conv_cases import BIPOLAR, CONVS, DENSES, SMALL, grid, pair_id, pairs
from lowbit_kernels import pack_weight, random_codes, upstream
from tvm import te

from tvmbits.ops import reference
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import subbyte_pack
from tvmbits.ops.subbyte_gemm import subbyte_conv2d_gemm, subbyte_dense_gemm

pytestmark = pytest.mark.kernel

WIDER = [
    (Encoding("unsigned", 4), Encoding("signed", 4)),
    (Encoding("signed", 4), Encoding("unsigned", 3)),
    (Encoding("unsigned", 8), Encoding("unsigned", 8)),
    (Encoding("signed", 8), Encoding("signed", 8)),
]


@functools.cache
def _build(a_shape, out_channels, w_shape, w_dtype, act, wgt, conv_args):
    codes = te.placeholder(a_shape, "int32", "codes")
    weight = te.placeholder(w_shape, w_dtype, "weight")
    packed = subbyte_pack(codes, act)
    if conv_args:
        out = subbyte_conv2d_gemm(packed, weight, a_shape[-1], out_channels, act, wgt, *conv_args)
    else:
        out = subbyte_dense_gemm(packed, weight, a_shape[-1], out_channels, act, wgt)
    mod = tvm.IRModule({"main": te.create_prim_func([codes, weight, out])})
    return tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"})), tuple(int(d) for d in out.shape)


def run(a, w, act, wgt, *conv_args):
    w_packed = pack_weight("subbyte", w, wgt)
    func, shape = _build(a.shape, w.shape[0], w_packed.shape, w_packed.dtype.name, act, wgt,
                         tuple(tuple(x) for x in conv_args))
    out = tvm.runtime.tensor(np.zeros(shape, "int32"))
    func(tvm.runtime.tensor(upstream(act, a)), tvm.runtime.tensor(w_packed), out)
    return out.numpy()


@pytest.mark.parametrize("conv, pair", grid(CONVS[:6], pairs(SMALL) + WIDER))
def test_conv2d_gemm_matches_reference(conv, pair):
    act, wgt = pair
    rng = np.random.default_rng(zlib.crc32(f"{conv}{pair_id(pair)}".encode()))
    a = random_codes(rng, act, (conv.batch, *conv.size, conv.channels))
    w = random_codes(rng, wgt, (conv.out_channels, *conv.kernel, conv.channels))
    expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), conv.strides, conv.padding)
    np.testing.assert_array_equal(run(a, w, act, wgt, conv.strides, conv.padding), expected)


@pytest.mark.parametrize("pair", [(BIPOLAR, BIPOLAR), (Encoding("signed", 2), Encoding("signed", 2))] + WIDER,
                         ids=pair_id)
@pytest.mark.parametrize("shape", DENSES + [(3, 300, 20)], ids=str)
def test_dense_gemm_matches_reference(shape, pair):
    act, wgt = pair
    batch, features, out_features = shape
    rng = np.random.default_rng(13)
    a = random_codes(rng, act, (batch, features))
    w = random_codes(rng, wgt, (out_features, features))
    np.testing.assert_array_equal(run(a, w, act, wgt), reference.dense(act.decode(a), wgt.decode(w)))
