"""The Relax passes around the low-bit lowering, in the order they run.

`to_nhwc` runs before layers are found: NHWC activations and OHWI weights for every conv2d
(TVM's ConvertLayout inserts the transposes at the graph's edges only), constants folded.
`schedule` runs after lowering: TVM's legalization and fusion (FuseOps fuses epilogues into
the op_pattern-4 kernels), then tuned schedules from a MetaSchedule database where it has them
and the default schedules of `tvmbits.schedules` elsewhere;
`lower_pipeline` is TVM's own lowering to the VM, which `tvm.compile` runs last.
"""

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_backend
from tvm.relax.backend.cuda import pipeline as cuda_backend
from tvm.s_tir import dlight

from tvmbits.schedules import default_rules


def to_nhwc(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    with target:
        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    return relax.transform.FoldConstant()(mod)


def fuse(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Legalize and fuse: epilogues go into the op_pattern-4 kernels, one PrimFunc per kernel
    (the functions that tuning tasks and schedules see)."""
    with target:
        passes = _backend(target).library_dispatch_passes(target) + [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ]
        return tvm.transform.Sequential(passes)(mod)


def schedule(mod: tvm.IRModule, target: tvm.target.Target, database=None) -> tvm.IRModule:
    """`fuse`, then schedule every PrimFunc: from the tuning `database` where it has the
    function's workload, else with the default rules of `tvmbits.schedules`."""
    mod = fuse(mod, target)
    with target:
        if database is not None:
            with database:
                mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        return dlight.ApplyDefaultSchedule(*default_rules(target))(mod)


def lower_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's own lowering of a scheduled module to the Relax VM (`tvm.compile`'s relax_pipeline)."""

    @tvm.transform.module_pass(opt_level=0, name="TvmbitsLower")
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            backend = _backend(target)
            passes = backend.dataflow_lower_passes(target) + backend.finalize_passes(target)
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def _backend(target: tvm.target.Target):
    # relax.pipeline.dataflow_lower_passes does not reach the CPU backend's in TVM 0.27: the
    # cpu_generic package does not export it, so take the backend modules directly.
    return cuda_backend if target.kind.name == "cuda" else cpu_backend
