"""Which kernel `auto` picks for a pair of encodings, with and without byte dot products."""

import pytest

from tvmbits.ops.encoding import Encoding
from tvmbits.passes.layer_plan import LayerPlan


def chosen(abits: int, wbits: int, byte_dot: bool, forced: str = "auto") -> str:
    act = Encoding("bipolar", 1) if abits == 1 else Encoding("unsigned", abits)
    wgt = Encoding("bipolar", 1) if wbits == 1 else Encoding("signed", wbits)
    plan = LayerPlan(None, "pending", "post-training", act=act, wgt=wgt, forced_kernel=forced, byte_dot=byte_dot)
    plan.choose_kernel()
    return plan.kernel


@pytest.mark.parametrize(
    "abits, wbits, byte_dot, kernel",
    [
        (1, 1, False, "bitserial"),
        (1, 1, True, "bitserial"),  # one popcount per word: faster than bytes everywhere
        (2, 1, True, "bitserial"),
        (1, 2, True, "bitserial"),
        (2, 2, False, "bitserial"),
        (2, 2, True, "subbyte"),  # four plane pairs cost more than a VNNI dot product
        (3, 1, False, "subbyte"),
        (4, 4, True, "subbyte"),
        (8, 2, False, "subbyte"),
    ],
)
def test_auto_kernel(abits, wbits, byte_dot, kernel):
    assert chosen(abits, wbits, byte_dot) == kernel


def test_a_forced_kernel_is_kept():
    assert chosen(2, 2, True, forced="bitserial") == "bitserial"
    assert chosen(1, 1, False, forced="subbyte") == "subbyte"
