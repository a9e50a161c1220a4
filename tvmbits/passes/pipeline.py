"""The Relax passes around the low-bit lowering, in the order they run.

`to_nhwc` runs before layers are found: NHWC activations and OHWI weights for every conv2d
(TVM's ConvertLayout inserts the transposes at the graph's edges only), constants folded.
`schedule` runs after lowering: TVM's legalization and fusion (FuseOps fuses epilogues into
the op_pattern-4 kernels), then the default schedules of `tvmbits.schedules`;
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


def schedule(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Legalize, fuse (epilogues into the op_pattern-4 kernels) and schedule every PrimFunc."""
    with target:
        passes = _backend(target).library_dispatch_passes(target) + [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            dlight.ApplyDefaultSchedule(*default_rules(target)),
        ]
        return tvm.transform.Sequential(passes)(mod)


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
