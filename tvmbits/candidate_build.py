"""How `tvmbits tune` builds and exports a candidate, in MetaSchedule's builder workers.

The builder starts fresh worker processes for every batch of candidates, and each one imports
the module these functions live in: this one imports only TVM (about 4 s), where `tvmbits.tune`
with the compiler and the schedules behind it took about 15 s per batch.
"""

import tempfile

import tvm
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

from tvmbits.passes.tiles_on_stack import TIR_PIPELINE


def build(mod: tvm.IRModule, target: tvm.target.Target, _params) -> tvm.runtime.Module:
    """MetaSchedule's default build without its import of every tensor intrinsic (about 30 s
    in each fresh builder process; the low-bit kernels use none of them): a candidate is built
    and measured without its weight regrouping, which `PrepackWeights` does at compile time
    (the runner passes the regrouped weight). Lowered as a compile lowers it (`TIR_PIPELINE`)."""
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm.driver.build(mod, target=target, pipeline=TIR_PIPELINE)


def cross_export(compiler: str):
    """An export that links a candidate with the cross compiler `compiler` (e.g.
    aarch64-linux-gnu-g++), for a board of another architecture; returns the library's path."""

    def export(mod: tvm.runtime.Module) -> str:
        path = tempfile.mkdtemp(prefix="tvmbits-tune-") + "/tune.so"
        mod.export_library(path, fcompile=tvm.support.cc.cross_compiler(compiler))
        return path

    return export
