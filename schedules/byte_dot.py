"""Which CPUs multiply bytes fast: the kernel choice asks `bitserial_pairs(target)`."""

from tvm.target import Target

from tvmbits.schedules.arm_dot import has_dotprod
from tvmbits.schedules.vnni import has_vnni


def bitserial_pairs(target: Target) -> int:
    """The most bit-plane pairs (activation bits × weight bits, both at most 2) a layer may have
    for `auto` to run it bit-serial on `target` rather than as bytes (`LayerPlan.choose_kernel`);
    bit-serial costs a popcount pass per pair, a dot-product sub-byte kernel the same at any
    width up to 7 bits.

    - AArch64 dot product (SDOT/UDOT): 1, only 1×1 bits: on the emulated Cortex-A76, ResNet-18's
      3×3 layers ran W1A2 bit-serial in 1.1–1.7× the instructions of the SDOT kernel on every
      layer (`benchmarks/arm.py`; the README's Arm section has both counts);
    - x86 AVX512-VNNI (`vpdpbusd`): 2: bit-serial W1A2 ran a little faster than sub-byte W2A2,
      bit-serial W2A2 slower (`benchmarks/layers.py`);
    - other CPUs, without a byte dot product: 4, all of 2×2 bits bit-serial."""
    if has_dotprod(target):
        return 1
    if has_vnni(target):
        return 2
    return 4
