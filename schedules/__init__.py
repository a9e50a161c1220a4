"""Per-target schedules of the low-bit operators, as dlight schedule rules.

`default_rules(target)` lists the rules the build applies, in order, to every fused PrimFunc
that tuning did not already schedule; the first rule that recognises a function schedules it.
The tensor intrinsics the rules tensorize into are registered with TVM on first use
(`register_intrinsics`), not at import: parsing them costs seconds every process would pay.
"""

import tvm
from tvm.s_tir import dlight

from tvmbits.schedules import arm_dot, cuda_mma, vnni
from tvmbits.schedules.cpu import LowBitCPU, ParallelCPU
from tvmbits.schedules.cuda import LowBitCUDA


def default_rules(target: tvm.target.Target) -> list:
    if "gpu" in target.keys:
        return [
            LowBitCUDA(),
            dlight.gpu.Matmul(),
            dlight.gpu.GEMV(),
            dlight.gpu.Reduction(),
            dlight.gpu.GeneralReduction(),
            dlight.gpu.Fallback(),
        ]
    return [LowBitCPU(), ParallelCPU()]


def register_all_intrinsics() -> None:
    """Register every tensor intrinsic any target's schedules tensorize into: a tuning log's
    records (traces naming them) deserialize only once they are (about 0.6 s)."""
    cuda_mma.register()
    arm_dot.register()
    vnni.register()


def register_intrinsics(target: tvm.target.Target) -> None:
    """Register the tensor intrinsics schedules for `target` may tensorize into: needed before a
    tuning log's schedules (traces naming them) are replayed."""
    if "gpu" in target.keys:
        cuda_mma.register()
    elif arm_dot.is_aarch64(target):
        arm_dot.register()
    elif vnni.has_vnni(target):
        vnni.register()
