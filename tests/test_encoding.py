import numpy as np
import pytest

from tvmbits.ops.encoding import Encoding

ALL = [Encoding("bipolar", 1)] + [Encoding(k, b) for k in ("unsigned", "signed") for b in range(1, 9)]


def test_values_of_named_codes():
    assert Encoding("bipolar", 1).decode([0, 1]).tolist() == [-1, 1]
    assert Encoding("unsigned", 3).decode([0, 5, 7]).tolist() == [0, 5, 7]
    assert Encoding("signed", 4).decode([0, 7, 8, 15]).tolist() == [0, 7, -8, -1]
    assert Encoding("signed", 8).decode([127, 128, 255]).tolist() == [127, -128, -1]
    assert Encoding("signed", 2).decode([-2, -1]).tolist() == [-2, -1]  # values are their own codes


@pytest.mark.parametrize("encoding", ALL, ids=str)
def test_every_code_decodes_into_the_range_and_encodes_back(encoding):
    codes = np.arange(1 << encoding.bits)
    values = encoding.decode(codes)
    lo, hi = encoding.value_range
    assert values.min() == lo and values.max() == hi
    assert len(set(values.tolist())) == len(codes)
    assert encoding.encode(values).tolist() == codes.tolist()


@pytest.mark.parametrize("encoding", ALL, ids=str)
def test_values_are_offset_plus_weighted_bit_planes(encoding):
    codes = np.arange(1 << encoding.bits)
    planes = [(codes >> i) & 1 for i in range(encoding.bits)]
    by_planes = encoding.offset + sum(c * p for c, p in zip(encoding.coefficients, planes))
    assert by_planes.tolist() == encoding.decode(codes).tolist()


@pytest.mark.parametrize(
    "kind, bits, message",
    [("bipolar", 2, "bipolar is 1 bit"), ("unsigned", 0, "bits must be 1 to 8"),
     ("signed", 9, "bits must be 1 to 8"), ("ternary", 2, "unknown encoding 'ternary'")],
)
def test_bad_encodings_raise_value_error(kind, bits, message):
    with pytest.raises(ValueError, match=message):
        Encoding(kind, bits)


def test_values_out_of_range_are_refused():
    with pytest.raises(ValueError):
        Encoding("signed", 4).encode([8])
    with pytest.raises(ValueError):
        Encoding("bipolar", 1).encode([1, 0])
