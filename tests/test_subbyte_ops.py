"""Sub-byte conv2d and dense agree bit-exactly with the int64 reference on decoded values, with
the generic schedule and, on a CPU with AVX512-VNNI, with the tensorized one."""

import zlib
from dataclasses import replace

import numpy as np
import pytest
from conv_cases import BIPOLAR, CONVS, DENSES, grid, pair_id, pairs
from lowbit_kernels import TARGET, build, random_codes, run

from tvmbits.ops import reference
from tvmbits.ops.encoding import Encoding
from tvmbits.schedules.vnni import has_vnni
from tvmbits.targets.profile import load

HOST = load("host").tvm_target()
needs_vnni = pytest.mark.skipif(not has_vnni(HOST), reason="this CPU has no AVX512-VNNI")

MAIN = [BIPOLAR, Encoding("unsigned", 3), Encoding("signed", 4), Encoding("unsigned", 5), Encoding("signed", 8)]
OTHERS = [
    (Encoding("unsigned", 8), Encoding("signed", 7)),
    (Encoding("signed", 6), Encoding("unsigned", 8)),
    (Encoding("unsigned", 2), Encoding("signed", 2)),
    (Encoding("signed", 1), Encoding("unsigned", 1)),
]
ALL = [BIPOLAR] + [Encoding(kind, bits) for kind in ("unsigned", "signed") for bits in range(1, 9)]


def check_conv(conv, act, wgt, seed, **build):
    rng = np.random.default_rng(seed)
    a = random_codes(rng, act, (conv.batch, *conv.size, conv.channels))
    w = random_codes(rng, wgt, (conv.out_channels, *conv.kernel, conv.channels))
    got = run("subbyte", a, w, act, wgt, conv.strides, conv.padding, **build)
    expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), conv.strides, conv.padding)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def check_dense(shape, act, wgt, seed, **build):
    batch, features, out_features = shape
    rng = np.random.default_rng(seed)
    a = random_codes(rng, act, (batch, features))
    w = random_codes(rng, wgt, (out_features, features))
    np.testing.assert_array_equal(
        run("subbyte", a, w, act, wgt, **build), reference.dense(act.decode(a), wgt.decode(w))
    )


@pytest.mark.parametrize("conv, pair", grid([CONVS[i] for i in (1, 2, 4, 7)], pairs(MAIN) + OTHERS))
def test_conv2d(conv, pair):
    check_conv(conv, *pair, seed=zlib.crc32(f"{conv}{pair_id(pair)}".encode()))


@pytest.mark.parametrize("conv", CONVS, ids=str)
def test_conv2d_unscheduled(conv):
    # 4-bit and less: LLVM takes seconds on the unscheduled 5-8-bit kernels with padding
    check_conv(conv, Encoding("signed", 3), Encoding("unsigned", 4), seed=17, scheduled=False)


@pytest.mark.parametrize("shape, pair", grid(DENSES, pairs(MAIN) + OTHERS))
def test_dense(shape, pair):
    check_dense(shape, *pair, seed=13)


# output channels in multiples of 16 (the tensorized blocks), odd channel counts and paddings
VNNI_CONVS = [replace(CONVS[i], out_channels=o) for i, o in ((1, 16), (2, 32), (4, 16), (7, 48))]


@needs_vnni
@pytest.mark.parametrize("conv, pair", grid(VNNI_CONVS, pairs(MAIN) + OTHERS))
def test_conv2d_vnni(conv, pair):
    check_conv(conv, *pair, seed=zlib.crc32(f"{conv}{pair_id(pair)}v".encode()), target=HOST)


@needs_vnni
@pytest.mark.parametrize("shape, pair", grid([(1, 70, 16), (3, 33, 32)], pairs(MAIN) + OTHERS))
def test_dense_vnni(shape, pair):
    check_dense(shape, *pair, seed=11, target=HOST)


@needs_vnni
def test_vnni_kernel_uses_vpdpbusd():
    conv = VNNI_CONVS[0]
    act, wgt = Encoding("unsigned", 4), Encoding("signed", 4)
    rng = np.random.default_rng(0)
    a = random_codes(rng, act, (conv.batch, *conv.size, conv.channels))
    w = random_codes(rng, wgt, (conv.out_channels, *conv.kernel, conv.channels))
    module = build("subbyte", a, w, act, wgt, conv.strides, conv.padding, target=HOST)
    assert "vpdpbusd" in module.mod.inspect_source("asm")


@pytest.mark.parametrize("target", [TARGET, pytest.param(HOST, marks=needs_vnni)], ids=["generic", "vnni"])
def test_extreme_codes_do_not_overflow(target):
    act, wgt = Encoding("unsigned", 8), Encoding("signed", 8)
    a = np.full((1, 3, 3, 70), 255)
    w = np.full((16, 3, 3, 70), 0x80)  # −128
    got = run("subbyte", a, w, act, wgt, (1, 1), (0, 0, 0, 0), target=target)
    assert got.tolist() == [[[[-9 * 70 * 255 * 128] * 16]]]


@pytest.mark.slow
@pytest.mark.parametrize("pair", pairs(ALL), ids=pair_id)
@pytest.mark.parametrize("conv", [CONVS[1], CONVS[3], CONVS[5]], ids=str)
def test_conv2d_every_encoding_pair(conv, pair):
    check_conv(conv, *pair, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("pair", pairs(ALL), ids=pair_id)
def test_dense_every_encoding_pair(pair):
    check_dense((2, 70, 3), *pair, seed=5)
