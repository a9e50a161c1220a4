"""The packing ops: bit layout pinned by hand, TE op equal to its numpy twin."""

import functools

import numpy as np
import pytest
import tvm
from tvm import te

from tvmbits.ops.bitpack import bitpack, pack_bits
from tvmbits.ops.subbyte import pack_subbyte, subbyte_pack

TARGET = tvm.target.Target({"kind": "llvm"})
CHANNELS = [1, 5, 31, 32, 33, 64, 70, 100]


@functools.cache
def _built(op, shape, bits):
    codes = te.placeholder(shape, "int32", "codes")
    packed = op(codes, bits)
    return tvm.compile(te.create_prim_func([codes, packed]), target=TARGET), packed


def run_te(op, codes, bits):
    func, packed = _built(op, codes.shape, bits)
    out = tvm.runtime.tensor(np.zeros([int(d) for d in packed.shape], str(packed.dtype)))
    func(tvm.runtime.tensor(codes.astype("int32")), out)
    return out.numpy()


def test_bit_layout_by_hand():
    codes = np.zeros(35, np.int64)
    codes[[0, 3, 33]] = [1, 2, 3]  # channel 0: plane 0; 3: plane 1; 33: both
    packed = pack_bits(codes, 2)
    assert packed.dtype == np.uint32 and packed.shape == (2, 2)
    assert packed.tolist() == [[1, 0b10], [1 << 3, 0b10]]
    assert run_te(bitpack, codes, 2).tolist() == packed.tolist()


def test_negative_values_pack_as_their_twos_complement_codes():
    values = np.array([[-1, -2, 1, -4]])
    assert pack_bits(values, 3).tolist() == pack_bits(values & 7, 3).tolist()
    assert run_te(bitpack, values, 3).tolist() == pack_bits(values & 7, 3).tolist()


def test_nibble_layout_by_hand():
    packed = pack_subbyte(np.array([1, 2, 3, -1, 5]), 4)
    assert packed.dtype == np.uint8
    assert packed.tolist() == [0x21, 0xF3, 0x05]  # channel 2k low, odd tail's high nibble 0
    assert pack_subbyte(np.array([200, -3]), 8).tolist() == [200, 253]
    assert pack_subbyte(np.array([3, 1, 2]), 2).tolist() == [0x13, 0x02]


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_te_bitpack_equals_numpy(channels, bits):
    rng = np.random.default_rng(channels * 10 + bits)
    codes = rng.integers(-(1 << 8), 1 << 8, size=(2, 3, channels))
    expected = pack_bits(codes, bits)
    assert expected.shape == (2, 3, bits, -(-channels // 32))
    np.testing.assert_array_equal(run_te(bitpack, codes, bits), expected)


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("bits", [2, 4, 5, 8])
def test_te_subbyte_pack_equals_numpy(channels, bits):
    rng = np.random.default_rng(channels * 10 + bits)
    codes = rng.integers(-(1 << 8), 1 << 8, size=(3, channels))
    expected = pack_subbyte(codes, bits)
    assert expected.shape == (3, -(-channels // 2) if bits <= 4 else channels)
    np.testing.assert_array_equal(run_te(subbyte_pack, codes, bits), expected)


@pytest.mark.parametrize("bits", [1, 2, 7])
def test_packed_planes_unpack_to_the_codes(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(4, 70))
    packed = pack_bits(codes, bits).astype(np.uint64)  # [4, bits, 3]
    shifts = np.arange(32, dtype=np.uint64)
    planes = ((packed[..., None] >> shifts) & 1).astype(np.int64).reshape(4, bits, -1)  # [4, bits, 96]
    assert not planes[..., 70:].any()
    assert (planes[..., :70] << np.arange(bits)[:, None]).sum(axis=1).tolist() == codes.tolist()
