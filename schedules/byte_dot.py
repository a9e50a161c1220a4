"""Which CPUs multiply bytes fast: the kernel choice asks `byte_dot(target)`."""

from tvm.target import Target

from tvmbits.schedules.arm_dot import has_dotprod
from tvmbits.schedules.vnni import has_vnni


def byte_dot(target: Target) -> bool:
    """Whether `target` has byte dot-product instructions the sub-byte kernels are tensorized
    into: x86 AVX512-VNNI (`vpdpbusd`) or the AArch64 dot product (SDOT/UDOT). There a 2×2-bit
    layer runs faster as bytes than bit-serial (`LayerPlan.choose_kernel`)."""
    return has_vnni(target) or has_dotprod(target)
