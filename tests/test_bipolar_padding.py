"""Zero padding of a bipolar conv counts as value 0, never −1, in every kernel (DESIGN.md)."""

import numpy as np
import pytest
from lowbit_kernels import run

from tvmbits.ops import reference
from tvmbits.ops.encoding import Encoding

BIPOLAR = Encoding("bipolar", 1)
# one row, three pixels, one channel: a = [+1, −1, +1], w = [+1, +1, −1], pad one column each side
A_CODES = np.array([1, 0, 1]).reshape(1, 1, 3, 1)
W_CODES = np.array([1, 1, 0]).reshape(1, 1, 3, 1)
PADDING = (0, 1, 0, 1)
# x=0: 0·(+1) + (+1)(+1) + (−1)(−1) = 2;  x=1: 1 − 1 − 1 = −1;  x=2: (−1)(+1) + (+1)(+1) + 0 = 0
# (a padded −1 would give 1, −1, 1)
EXPECTED = [2, -1, 0]


def test_reference():
    got = reference.conv2d_nhwc(BIPOLAR.decode(A_CODES), BIPOLAR.decode(W_CODES), (1, 1), PADDING)
    assert got.ravel().tolist() == EXPECTED


@pytest.mark.parametrize("scheduled", [False, True])
@pytest.mark.parametrize("kernel", ["bitserial", "subbyte"])
def test_kernel(kernel, scheduled):
    got = run(kernel, A_CODES, W_CODES, BIPOLAR, BIPOLAR, (1, 1), PADDING, scheduled=scheduled)
    assert got.ravel().tolist() == EXPECTED


@pytest.mark.parametrize("kernel", ["bitserial", "subbyte"])
def test_kernel_with_multibit_weights(kernel):
    wgt = Encoding("signed", 2)
    w_codes = wgt.encode(np.array([1, -2, -1])).reshape(1, 1, 3, 1)
    # x=0: 0 + (+1)(−2) + (−1)(−1) = −1;  x=1: 1 + 2 − 1 = 2;  x=2: −1 − 2 + 0 = −3
    got = run(kernel, A_CODES, w_codes, BIPOLAR, wgt, (1, 1), PADDING)
    assert got.ravel().tolist() == [-1, 2, -3]
