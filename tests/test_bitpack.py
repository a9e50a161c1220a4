"""The packing ops: bit and byte layouts pinned by hand, TE op equal to its numpy twin."""

import functools

import numpy as np
import pytest
import tvm
from tvm import s_tir, te
from tvm.s_tir import dlight

from tvmbits.ops.bitpack import bitpack, fill_then_pack, pack_bits
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import block_weight, pack_subbyte_weight, per_byte, subbyte_pack, weight_values
from tvmbits.schedules.cpu import LowBitCPU

TARGET = tvm.target.Target({"kind": "llvm"})
CHANNELS = [1, 5, 31, 32, 33, 64, 70, 100]


@functools.cache
def _built(op, shape, bits):
    """`op(codes, bits)` built; `bits` is the Encoding for `subbyte_pack`."""
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


def test_subbyte_weight_layout_by_hand():
    values = np.array([[1, 2, 3, -1, 5]])  # one output channel, five input channels
    packed = pack_subbyte_weight(values, Encoding("signed", 4))
    assert packed.dtype == np.uint8 and packed.shape == (1, 2, 16, 2)  # [O/16, C/4, 16 lanes, 2 bytes]
    assert packed[0, :, 0].tolist() == [[0x21, 0xF3], [0x05, 0x00]]  # channel 2j low, padding 0
    assert not packed[0, :, 1:].any()  # output channels 1..15 are padding
    crumbs = pack_subbyte_weight(np.array([[1, -2, -1, 0, 1]]), Encoding("signed", 2))
    assert crumbs.shape == (1, 2, 16, 1)  # four 2-bit fields a byte, channel 4j + k in field k
    assert crumbs[0, :, 0, 0].tolist() == [0b00_11_10_01, 0b01]
    assert pack_subbyte_weight(np.array([[-1, 1]]), Encoding("bipolar", 1))[0, 0, 0, 0] == 0b01_11
    wide = pack_subbyte_weight(np.array([[-128, 127, 3]]), Encoding("signed", 8))
    assert wide.dtype == np.int8 and wide[0, 0, 0].tolist() == [-128, 127, 3, 0]
    assert pack_subbyte_weight(np.array([[255]]), Encoding("unsigned", 8)).dtype == np.uint8


@pytest.mark.parametrize(
    "encoding, values, expected",
    [
        (Encoding("signed", 4), [-8, 7, 0], [0, 15, 8, 8]),  # value + 8; the padded channel is 0
        (Encoding("unsigned", 3), [0, 7, 5], [0, 7, 5, 0]),
        (Encoding("signed", 8), [-128, 127, -1, 0, 1], [0, 255, 127, 128, 129, 128, 128, 128]),
        (Encoding("bipolar", 1), [0, 1, 1], [0, 2, 2, 1]),  # codes in: −1 → 0, +1 → 2, 0 → 1
    ],
)
def test_subbyte_pack_biases_values_into_bytes(encoding, values, expected):
    assert run_te(subbyte_pack, np.array([values]), encoding).tolist() == [expected]


@pytest.mark.parametrize("encoding", [Encoding("bipolar", 1), Encoding("signed", 2), Encoding("unsigned", 2),
                                      Encoding("signed", 3), Encoding("signed", 4),
                                      Encoding("unsigned", 4), Encoding("signed", 6), Encoding("unsigned", 8)])
def test_subbyte_weight_values_unpack_to_the_blocked_values(encoding):
    lo, hi = encoding.value_range
    values = np.random.default_rng(encoding.bits).integers(lo, hi + 1, size=(20, 3, 9))
    if encoding.kind == "bipolar":
        values = np.where(values >= 0, 1, -1)
    blocked, packed = block_weight(values, encoding), pack_subbyte_weight(values, encoding)
    if per_byte(encoding) == 1:  # stored as the blocked bytes
        assert packed.dtype == blocked.dtype and packed.tolist() == blocked.tolist()
        with pytest.raises(ValueError, match="nothing to unpack"):
            weight_values(te.placeholder(packed.shape, str(packed.dtype), "w"), encoding)
        got = blocked
    else:
        weight = te.placeholder(packed.shape, str(packed.dtype), "w")
        out = weight_values(weight, encoding)
        func = tvm.compile(te.create_prim_func([weight, out]), target=TARGET)
        result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
        func(tvm.runtime.tensor(packed), result)
        got = result.numpy()
        assert got.dtype == blocked.dtype and got.tolist() == blocked.tolist()
    # [2 blocks, 3 taps, 3 channel groups, 16, 4] back to [O, taps, C]
    unblocked = np.moveaxis(got, -2, 1).reshape(32, 3, 12)
    assert unblocked[:20, :, :9].tolist() == values.tolist()
    assert not unblocked[20:].any() and not unblocked[:, :, 9:].any()


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_te_bitpack_equals_numpy(channels, bits):
    rng = np.random.default_rng(channels * 10 + bits)
    codes = rng.integers(-(1 << 8), 1 << 8, size=(2, 3, channels))
    expected = pack_bits(codes, bits)
    assert expected.shape == (2, 3, bits, -(-channels // 32))
    np.testing.assert_array_equal(run_te(bitpack, codes, bits), expected)


@pytest.mark.parametrize("bits", [1, 2, 7])
def test_packed_planes_unpack_to_the_codes(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(4, 70))
    packed = pack_bits(codes, bits).astype(np.uint64)  # [4, bits, 3]
    shifts = np.arange(32, dtype=np.uint64)
    planes = ((packed[..., None] >> shifts) & 1).astype(np.int64).reshape(4, bits, -1)  # [4, bits, 96]
    assert not planes[..., 70:].any()
    assert (planes[..., :70] << np.arange(bits)[:, None]).sum(axis=1).tolist() == codes.tolist()


@pytest.mark.parametrize("channels, bits, padding", [(5, 1, (1, 1, 1, 1)), (33, 2, (0, 2, 1, 0)), (64, 1, (2, 1, 0, 3))])
@pytest.mark.parametrize("scheduled", [False, True], ids=["plain", "scheduled"])
def test_padded_bitpack_writes_zero_words_around_the_pixels(channels, bits, padding, scheduled):
    """The layout a padded bit-serial conv reads, written by its producer: NHWC codes packed with
    rows and columns of zero words around them, equal to the numpy twin, also split into a zero
    fill and the packing of the pixels (`fill_then_pack`, as the compiler emits it), which the
    CPU schedule runs as one flat loop and the packing's loops over the pixels alone, with no
    test for the border."""
    rng = np.random.default_rng(channels)
    codes = rng.integers(-(1 << 8), 1 << 8, size=(2, 5, 4, channels))
    top, left, bottom, right = padding
    expected = pack_bits(codes, bits, padding)
    assert expected.shape == (2, top + 5 + bottom, left + 4 + right, bits, -(-channels // 32))
    assert not expected[:, :top].any() and not expected[:, :, :left].any()
    assert expected[:, top:top + 5, left:left + 4].tolist() == pack_bits(codes, bits).tolist()
    placeholder = te.placeholder(codes.shape, "int32", "codes")
    packed = bitpack(placeholder, bits, padding)
    mod = tvm.IRModule({"main": te.create_prim_func([placeholder, packed])})
    if scheduled:
        mod["main"] = fill_then_pack(mod["main"])
        assert int(mod["main"].attrs["op_pattern"]) == 2  # injective, as unsplit
        with TARGET:
            mod = dlight.ApplyDefaultSchedule(LowBitCPU())(mod)
        sch = s_tir.Schedule(mod["main"])
        assert len(sch.get_loops(sch.get_sblock("bitpack_pad_const"))) == 1
        words = sch.get(sch.get_sblock("bitpack"))
        assert [int(v.dom.extent) for v in words.iter_vars][1:3] == [5, 4]  # the pixels alone
        assert "if_then_else" not in words.body.script()  # no test for the border
    out = tvm.runtime.tensor(np.full(expected.shape, 0xFFFFFFFF, np.uint32))  # no word left unwritten
    tvm.compile(mod, target=TARGET)(tvm.runtime.tensor(codes.astype("int32")), out)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_padded_bitpack_needs_nhwc_codes():
    with pytest.raises(ValueError, match="NHWC"):
        bitpack(te.placeholder((3, 40), "int32"), 1, (1, 1, 1, 1))
