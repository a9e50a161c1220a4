"""Per-target schedules of the low-bit operators, as dlight schedule rules.

`default_rules(target)` lists the rules the build applies, in order, to every fused PrimFunc
that tuning did not already schedule; the first rule that recognises a function schedules it.
"""

import tvm
from tvm.s_tir import dlight

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
