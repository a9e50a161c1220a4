"""Bit-serial conv2d and dense agree bit-exactly with the int64 reference on decoded values."""

import zlib

import numpy as np
import pytest
from conv_cases import BIPOLAR, CONVS, DENSES, SMALL, grid, pair_id, pairs
from lowbit_kernels import random_codes, run

from tvmbits.ops import reference
from tvmbits.ops.encoding import Encoding

WIDER = [
    (Encoding("unsigned", 3), Encoding("signed", 4)),
    (Encoding("signed", 4), BIPOLAR),
    (BIPOLAR, Encoding("unsigned", 3)),
    (Encoding("signed", 3), Encoding("signed", 3)),
]
ALL = [BIPOLAR] + [Encoding(kind, bits) for kind in ("unsigned", "signed") for bits in range(1, 9)]


def check_conv(conv, act, wgt, seed, scheduled=True):
    rng = np.random.default_rng(seed)
    a = random_codes(rng, act, (conv.batch, *conv.size, conv.channels))
    w = random_codes(rng, wgt, (conv.out_channels, *conv.kernel, conv.channels))
    got = run("bitserial", a, w, act, wgt, conv.strides, conv.padding, scheduled=scheduled)
    expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), conv.strides, conv.padding)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def check_dense(shape, act, wgt, seed):
    batch, features, out_features = shape
    rng = np.random.default_rng(seed)
    a = random_codes(rng, act, (batch, features))
    w = random_codes(rng, wgt, (out_features, features))
    np.testing.assert_array_equal(
        run("bitserial", a, w, act, wgt), reference.dense(act.decode(a), wgt.decode(w))
    )


@pytest.mark.parametrize("conv, pair", grid(CONVS, pairs(SMALL)))
def test_conv2d_small_bits(conv, pair):
    check_conv(conv, *pair, seed=zlib.crc32(f"{conv}{pair_id(pair)}".encode()))


@pytest.mark.parametrize("conv", CONVS, ids=str)
def test_conv2d_unscheduled(conv):
    check_conv(conv, BIPOLAR, Encoding("signed", 2), seed=17, scheduled=False)


@pytest.mark.parametrize("pair", WIDER, ids=pair_id)
@pytest.mark.parametrize("conv", CONVS[1:4], ids=str)
def test_conv2d_wider_bits(conv, pair):
    check_conv(conv, *pair, seed=7)


@pytest.mark.parametrize("shape, pair", grid(DENSES, pairs(SMALL) + WIDER))
def test_dense(shape, pair):
    check_dense(shape, *pair, seed=11)


def test_extreme_codes_do_not_overflow():
    act, wgt = Encoding("signed", 8), Encoding("signed", 8)
    a = np.full((1, 3, 3, 70), 0x80)  # −128 everywhere
    w = np.full((2, 3, 3, 70), 0x80)
    got = run("bitserial", a, w, act, wgt, (1, 1), (0, 0, 0, 0))
    assert got.tolist() == [[[[9 * 70 * 128 * 128] * 2]]]


@pytest.mark.slow
@pytest.mark.parametrize("pair", pairs(ALL), ids=pair_id)
@pytest.mark.parametrize("conv", [CONVS[1], CONVS[2]], ids=str)
def test_conv2d_every_encoding_pair(conv, pair):
    check_conv(conv, *pair, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("pair", pairs(ALL), ids=pair_id)
def test_dense_every_encoding_pair(pair):
    check_dense((2, 70, 3), *pair, seed=5)
