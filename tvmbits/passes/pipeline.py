"""The compile pipeline, in the order it runs: one pass per phase.

    imported Relax module (frontend/)
      ─▶ ToNHWC          NHWC activations, OHWI weights for every conv2d; constants folded
      ─▶ FoldFlattenTranspose  NHWC data flattened straight into dense layers (weights reordered)
      ─▶ AnnotateLayers  every named conv/dense call wrapped into a layer function
      ─▶ PlanLayers      each layer's kernel, bits, scales into its function's attributes
      ─▶ Calibrate       activation ranges for post-training layers (only when some need them)
      ─▶ LowerLowBit     low-bit layers into quantize → pack → kernel → epilogue; float inlined
      ─▶ FoldThresholds  binarize(scales and shifts of a kernel's int32 result) → integer thresholds
      ─▶ UnpackAtLoad    stored sub-byte weights unpacked by `prepare`, run once at load
      ─▶ Fuse            TVM's legalization and fusion: epilogues into the kernels, and
                         (FusePacking, CPU targets) the packing of a kernel's result for the
                         next low-bit layer into the kernel's function
      ─▶ Schedule        tuned schedules from a MetaSchedule database, else tvmbits' defaults
      ─▶ PrepackWeights  the kernels' weight regrouping done once, on the constants
      ─▶ tvm.compile with `lower_pipeline` (TVM's own lowering to the Relax VM) and
         `TIR_PIPELINE` (TVM's TIR lowering, then TilesOnStack: register tiles on the stack)

Every phase is a `tvm.transform.Pass` named "tvmbits.<Phase>"; `DumpIR` is a pass instrument
that writes the module after each of them (`tvmbits compile --dump-ir DIR`).
"""

from pathlib import Path
from typing import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_backend
from tvm.relax.backend.cuda import pipeline as cuda_backend
from tvm.s_tir import dlight

from tvmbits.frontend.facts import LayerFacts
from tvmbits.passes.annotate_layers import AnnotateLayers
from tvmbits.passes.calibrate import Calibrate
from tvmbits.passes.fold_flatten_transpose import FoldFlattenTranspose
from tvmbits.passes.fold_thresholds import FoldThresholds
from tvmbits.passes.fuse_packing import FusePacking
from tvmbits.passes.layer_plan import LayerPlan, is_planned
from tvmbits.passes.lower_lowbit import LowerLowBit
from tvmbits.passes.plan_layers import PlanLayers
from tvmbits.passes.tiles_on_stack import TIR_PIPELINE  # noqa: F401 (the flow's last step, for tvm.compile)
from tvmbits.passes.unpack_at_load import PREPARE, UnpackAtLoad
from tvmbits.schedules import default_rules, register_intrinsics
from tvmbits.schedules.byte_dot import bitserial_pairs

PREFIX = "tvmbits."
TUNED_KERNELS = "tvmbits.tuned_kernels"


def lowbit_phases(
    target: tvm.target.Target,
    layer_names: list[str],
    facts: dict[str, LayerFacts],
    samples: Callable[[], list[list[np.ndarray]]],
    wbits: int | None = None,
    abits: int | None = None,
    all_layers: bool = False,
    kernel: str = "auto",
) -> list[tvm.transform.Pass]:
    """ToNHWC … Calibrate: the phases that find and plan the layers (`samples` is called only
    when some layer needs calibration)."""
    return [
        ToNHWC(target),
        FoldFlattenTranspose,
        AnnotateLayers(layer_names),
        PlanLayers(wbits, abits, all_layers, kernel, facts, bitserial_pairs(target), layer_names),
        Calibrate(samples),
    ]


def kernel_phases(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """LowerLowBit, FoldThresholds, UnpackAtLoad, Fuse: from a planned module to its kernel
    PrimFuncs (what tuning tasks see). LowerLowBit runs under `target`: for CUDA it emits the
    kernels' GEMM forms."""
    return [_under(target, LowerLowBit), FoldThresholds, UnpackAtLoad, Fuse(target)]


def build_phases(target: tvm.target.Target, database=None) -> list[tvm.transform.Pass]:
    """LowerLowBit … PrepackWeights: the phases from a planned module to one `tvm.compile` builds."""
    return [*kernel_phases(target), Schedule(target, database), PrepackWeights(target)]


def layer_plans(mod: tvm.IRModule, order: list[str] | None = None) -> list[LayerPlan]:
    """The plans of a planned module's layer functions, in `order` of names if given."""
    plans = [LayerPlan.of(func) for func in mod.functions.values() if is_planned(func)]
    if order is None:
        return sorted(plans, key=lambda plan: plan.name)
    rank = {name: i for i, name in enumerate(order)}
    return sorted(plans, key=lambda plan: rank.get(plan.name, len(rank)))


def count_calls(mod: tvm.IRModule, op_name: str) -> int:
    """How many calls of the Relax op `op_name` the module's functions make (e.g. the layout
    transposes left after ToNHWC: "relax.permute_dims")."""
    op = tvm.ir.Op.get(op_name)
    count = 0

    def visit(expr):
        nonlocal count
        if isinstance(expr, relax.Call) and expr.op.same_as(op):
            count += 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return count


def ToNHWC(target: tvm.target.Target) -> tvm.transform.Pass:  # noqa: N802 (TVM's pass naming)
    """NHWC activations and OHWI weights for every conv2d (TVM's ConvertLayout inserts the
    transposes at the graph's edges only), constants folded."""

    @tvm.transform.module_pass(opt_level=0, name=PREFIX + "ToNHWC")
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
        return relax.transform.FoldConstant()(mod)

    return transform


def Fuse(target: tvm.target.Target) -> tvm.transform.Pass:  # noqa: N802 (TVM's pass naming)
    """Legalize and fuse: epilogues go into the op_pattern-4 kernels, one PrimFunc per kernel
    (the functions that tuning tasks and schedules see); on CPU targets a kernel's function also
    packs its result for the next low-bit layer (`FusePacking`, between FuseOps and FuseTIR),
    which `schedules/cpu.py` does tile by tile (the CUDA schedules keep packing separate)."""

    @tvm.transform.module_pass(opt_level=0, name=PREFIX + "Fuse")
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            passes = _backend(target).library_dispatch_passes(target) + [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                *([] if target.kind.name == "cuda" else [FusePacking]),
                relax.transform.FuseTIR(),
            ]
            return _sparing_prepare(tvm.transform.Sequential(passes), mod)

    return transform


def Schedule(target: tvm.target.Target, database=None) -> tvm.transform.Pass:  # noqa: N802
    """Schedule every PrimFunc: from the tuning `database` where it has the function's
    workload, else with the default rules of `tvmbits.schedules`. The module attribute
    `TUNED_KERNELS` counts the functions the database scheduled."""

    @tvm.transform.module_pass(opt_level=0, name=PREFIX + "Schedule")
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            if database is not None:
                register_intrinsics(target)
                with database:
                    mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            tuned = sum(
                isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None
                and int(func.attrs.get("tirx.is_scheduled", 0)) == 1
                for func in mod.functions.values()
            )
            mod = dlight.ApplyDefaultSchedule(*default_rules(target))(mod)
            return mod.with_attr(TUNED_KERNELS, tuned)

    return transform


def PrepackWeights(target: tvm.target.Target) -> tvm.transform.Pass:  # noqa: N802 (TVM's pass naming)
    """Regroup constant weights once, at compile time: each kernel's weight copy (the block the
    schedules annotate for it, e.g. `[O, KH, KW, C]` into `[O/16, KH, KW, C, 16]`) becomes
    a function of its own (TVM's SplitLayoutRewritePreproc), which FoldConstant evaluates on the
    weight constant; the kernel then reads the regrouped constant. A weight that is not a
    constant keeps its copy, as a call before the kernel's. `PREPARE` is not folded: it unpacks
    the stored weights at load time (`UnpackAtLoad`)."""

    @tvm.transform.module_pass(opt_level=0, name=PREFIX + "PrepackWeights")
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            mod = _sparing_prepare(tvm.transform.Sequential([
                relax.transform.SplitLayoutRewritePreproc(),
                relax.transform.FoldConstant(),
                relax.transform.CanonicalizeBindings(),  # the kernel's binding, not an alias of it
            ]), mod)
            return relax.transform.DeadCodeElimination()(mod)  # the copies FoldConstant ran

    return transform


def lower_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's own lowering of a scheduled module to the Relax VM (`tvm.compile`'s relax_pipeline)."""

    @tvm.transform.module_pass(opt_level=0, name="TvmbitsLower")
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            backend = _backend(target)
            passes = backend.dataflow_lower_passes(target) + backend.finalize_passes(target)
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def run(mod: tvm.IRModule, phases: list[tvm.transform.Pass]) -> tvm.IRModule:
    """Run `phases` in order (each one is seen by the pass instruments of the current context)."""
    for phase in phases:
        mod = phase(mod)
    return mod


@tvm.instrument.pass_instrument
class DumpIR:
    """Writes the module after each tvmbits phase to `folder/NN-<Phase>.py` (TVMScript),
    numbered in the order the phases ran; `dump("name", mod)` writes one more (the import)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.count = 0

    def dump(self, name: str, mod: tvm.IRModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{self.count:02d}-{name}.py").write_text(mod.script(show_meta=False))
        self.count += 1

    def run_after_pass(self, mod, info):
        if info.name.startswith(PREFIX):
            self.dump(info.name[len(PREFIX):], mod)


def _sparing_prepare(passes: tvm.transform.Pass, mod: tvm.IRModule) -> tvm.IRModule:
    """`passes` run on every function of `mod` but `PREPARE`, which is left as it is, with the
    PrimFuncs it calls (FuseTIR drops those no other function calls): its calls on constants
    are meant to run at load time, and FoldConstant would run them now."""
    prepare = next((gv for gv in mod.get_global_vars() if gv.name_hint == PREPARE), None)
    out = passes(tvm.IRModule({gv: func for gv, func in mod.functions.items() if gv != prepare}, attrs=mod.attrs))
    if prepare is None:
        return out
    out[prepare] = mod[prepare]
    kept = {gv.name_hint for gv in out.get_global_vars()}
    for block in mod[prepare].body.blocks:
        for callee in (binding.value.args[0] for binding in block.bindings):
            if callee.name_hint not in kept:
                out[callee] = mod[callee]
    return out


def _under(target: tvm.target.Target, phase: tvm.transform.Pass) -> tvm.transform.Pass:
    """`phase` run with `target` as the current target (a wrapper without the tvmbits. prefix,
    so that DumpIR writes the module once, after `phase` itself)."""

    @tvm.transform.module_pass(opt_level=0, name="TvmbitsUnderTarget")
    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            return phase(mod)

    return transform


def _backend(target: tvm.target.Target):
    # relax.pipeline.dataflow_lower_passes does not reach the CPU backend's in TVM 0.27: the
    # cpu_generic package does not export it, so take the backend modules directly.
    return cuda_backend if target.kind.name == "cuda" else cpu_backend
