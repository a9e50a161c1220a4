"""Which kernel `auto` picks for a pair of encodings, on CPUs with and without byte dot products."""

import pytest

from tvmbits.ops.encoding import Encoding
from tvmbits.passes.layer_plan import LayerPlan


def chosen(abits: int, wbits: int, pairs: int, forced: str = "auto") -> str:
    act = Encoding("bipolar", 1) if abits == 1 else Encoding("unsigned", abits)
    wgt = Encoding("bipolar", 1) if wbits == 1 else Encoding("signed", wbits)
    plan = LayerPlan(None, "pending", "post-training", act=act, wgt=wgt, forced_kernel=forced, bitserial_pairs=pairs)
    plan.choose_kernel()
    return plan.kernel


NONE, VNNI, ARM_DOT = 4, 2, 1  # `bitserial_pairs` of a CPU without byte dot products, with VNNI, with SDOT


@pytest.mark.parametrize(
    "abits, wbits, pairs, kernel",
    [
        (1, 1, NONE, "bitserial"),
        (1, 1, VNNI, "bitserial"),  # one popcount per word: faster than bytes everywhere
        (1, 1, ARM_DOT, "bitserial"),
        (2, 1, VNNI, "bitserial"),
        (1, 2, VNNI, "bitserial"),
        (2, 1, ARM_DOT, "subbyte"),  # two plane pairs cost more than SDOT
        (1, 2, ARM_DOT, "subbyte"),
        (2, 2, NONE, "bitserial"),
        (2, 2, VNNI, "subbyte"),  # four plane pairs cost more than a VNNI dot product
        (3, 1, NONE, "subbyte"),
        (4, 4, VNNI, "subbyte"),
        (8, 2, NONE, "subbyte"),
    ],
)
def test_auto_kernel(abits, wbits, pairs, kernel):
    assert chosen(abits, wbits, pairs) == kernel


def test_a_forced_kernel_is_kept():
    assert chosen(2, 2, VNNI, forced="bitserial") == "bitserial"
    assert chosen(1, 1, NONE, forced="subbyte") == "subbyte"
