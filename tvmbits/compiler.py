"""Model → artifact: `tvmbits.compile`, the driver behind `tvmbits compile`.

    load ONNX ─▶ rewrite QONNX/QDQ quantizers (facts per layer) ─▶ import to Relax
      ─▶ the phases of `passes/pipeline.py` (NHWC, find and plan layers, calibrate, lower,
         fuse, schedule) ─▶ build for the profile's target ─▶ link (cross compiler) ─▶ Artifact
"""

import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import tvm

import tvmbits
from tvmbits import artifact, deploy, threads, tuning_log
from tvmbits.errors import InputError, OptionError, TargetError
from tvmbits.frontend import onnx as onnx_frontend
from tvmbits.passes import pipeline
from tvmbits.passes.plan_layers import check_bits
from tvmbits.targets import profile as profiles

RANDOM_CALIBRATION_SAMPLES = 4


@dataclass
class CompileOptions:
    """What `compile` takes besides the model (the CLI flags of the same names)."""

    target: str = "host"  # a profile name (targets/) or a .toml file
    arch: str | None = None  # CUDA profiles: the GPU architecture (sm_80, ...) instead of the profile's
    wbits: int | None = None  # post-training bits for float layers (1-8)
    abits: int | None = None
    all_layers: bool = False  # quantize the first and last layers too
    kernel: str = "auto"  # "auto" | "bitserial" | "subbyte"
    calibrate: list = field(default_factory=list)  # .npy files (or arrays) of calibration samples
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # for symbolic dims
    tuning_log: str | None = None  # a tuning log folder; None: the profile's shipped log, if any
    use_tuning: bool = True
    dump_ir: str | None = None  # write the module after each phase into this folder


def compile(  # noqa: A001 (the public name is the verb)
    model: "str | Path | onnx.ModelProto",
    target: str = "host",
    *,
    log: Callable[[str], None] = lambda message: None,
    **options,
) -> artifact.Artifact:
    """Compile an ONNX model (a path or an `onnx.ModelProto`) for the profile `target`.

    `options` are the fields of `CompileOptions` (arch, wbits, abits, all_layers, kernel, calibrate,
    input_shapes, tuning_log, use_tuning, dump_ir); `log` receives one line per step. Raises a
    `tvmbits.errors.UserError` subclass for anything the caller can fix.
    """
    known = {f.name for f in fields(CompileOptions)} - {"target"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"compile() got unknown options: {', '.join(sorted(unknown))}")
    return compile_with(model, CompileOptions(target=target, **options), log)


@dataclass
class Planned:
    """A model imported and planned: each layer's plan in its layer function, nothing lowered."""

    mod: tvm.IRModule
    plans: list
    imported: onnx_frontend.ImportedModel
    profile: profiles.Profile
    target: tvm.target.Target
    source: str


def plan_model(
    model: "str | Path | onnx.ModelProto",
    options: CompileOptions,
    log: Callable[[str], None] = lambda message: None,
    dump: "pipeline.DumpIR | None" = None,
) -> Planned:
    """Import `model` and run the pipeline's phases up to Calibrate (used by `compile`, by the
    tuner, which must see the same kernels, and by `check`, which needs only the plans)."""
    profile = profiles.load(options.target, options.arch)
    check_bits("--wbits", options.wbits)
    check_bits("--abits", options.abits)
    onnx_model, source = _load(model, log)
    log(f"importing {source}")
    imported = onnx_frontend.import_model(onnx_model, source, options.input_shapes)
    target = profile.tvm_target()
    if dump is not None:
        dump.dump("import", imported.mod)

    def samples():
        found = _calibration_samples(imported, options.calibrate, log)
        log(f"calibrating activation ranges on {len(found)} samples")
        return found

    phases = pipeline.lowbit_phases(
        target, imported.layer_names, imported.facts, samples,
        options.wbits, options.abits, options.all_layers, options.kernel,
    )
    mod = pipeline.run(imported.mod, phases)
    plans = pipeline.layer_plans(mod, imported.layer_names)
    lowered = sum(plan.kernel != "float" for plan in plans)
    log(f"lowering {lowered} of {len(plans)} conv/dense layers to low-bit kernels")
    return Planned(mod, plans, imported, profile, target, source)


def compile_with(
    model: "str | Path | onnx.ModelProto", options: CompileOptions, log: Callable[[str], None] = lambda m: None
) -> artifact.Artifact:
    """`compile` with its options gathered."""
    threads.size_pool()  # before calibration and constant folding first run TVM kernels here
    if options.use_tuning and options.tuning_log:
        tuning_log.check_folder(options.tuning_log)  # before the slow work
    dump = pipeline.DumpIR(options.dump_ir) if options.dump_ir else None
    with tvm.transform.PassContext(instruments=[dump] if dump else []):
        planned = plan_model(model, options, log, dump)
        profile, target = planned.profile, planned.target
        log(f"building for {profile.name} ({target.kind.name})")
        database, log_path = _tuning_database(options, profile, log)
        mod = pipeline.run(planned.mod, pipeline.build_phases(target, database))
    tuned = int(mod.attrs[pipeline.TUNED_KERNELS])
    if database is not None:
        log(f"{tuned} kernels scheduled from the tuning log, the rest by the default schedules")
    with target:
        executable = tvm.compile(mod, target=target, relax_pipeline=pipeline.lower_pipeline(target),
                                 tir_pipeline=pipeline.TIR_PIPELINE)
    metadata = {
        "tvmbits_version": tvmbits.__version__,
        "tvm_version": tvm.__version__,
        "profile": profile.name,
        "arch": profile.arch,
        "device": profile.device,
        "target": str(target),
        "source": Path(planned.source).name,
        "inputs": [spec.to_json() for spec in planned.imported.inputs],
        "outputs": [spec.to_json() for spec in planned.imported.outputs],
        "layers": [plan.to_json() for plan in planned.plans],
        "tuning_log": log_path,
        "tuned_kernels": tuned,
        "layout_transposes": pipeline.count_calls(planned.mod, "relax.permute_dims"),
    }
    if profile.device == "cuda":
        metadata["device_code"] = (
            f"CUDA C source for {target.attrs['arch']}, compiled when the library is loaded: the loading "
            "machine needs a CUDA driver and NVRTC (cuda-bindings), or nvcc with TVM_CUDA_COMPILE_MODE=nvcc; "
            "`tvmbits run` registers TVM's compile callback (tvm.support.nvcc) itself"
        )
    workdir = tempfile.TemporaryDirectory(prefix="tvmbits-")
    library = Path(workdir.name) / artifact.LIBRARY
    _export(executable, library, profile)
    return artifact.Artifact.build(library, metadata, workdir)


def _load(model, log) -> tuple[onnx.ModelProto, str]:
    """The model and the name errors give it: its path, or "<model>" for a ModelProto."""
    if isinstance(model, onnx.ModelProto):
        return onnx_frontend.check(model, "<model>", log), "<model>"
    return onnx_frontend.load(model, log), str(model)


def _tuning_database(options: CompileOptions, profile, log):
    """The tuning database to apply and its path, or (None, None)."""
    if not options.use_tuning:
        return None, None
    path = Path(options.tuning_log) if options.tuning_log else tuning_log.default_log(profile.log_name)
    if not options.tuning_log and not path.is_dir():
        return None, None
    log(f"applying tuning log {path}")
    return tuning_log.read_database(path, log), str(path)


def _export(executable, library: Path, profile) -> None:
    fcompile = None
    if profile.cross_compiler:
        fcompile = tvm.support.cc.cross_compiler(profile.cross_compiler)
    elif tvm.support.cc.get_cc() is None:  # TVM would fail on its missing path with a TypeError
        raise TargetError(f"linking for target {profile.name} needs this machine's C++ compiler, and none was "
                          "found (install g++: scripts/setup.sh does; or set CXX)")
    try:
        executable.export_library(str(library), fcompile=fcompile)
    except Exception as err:  # the linker's own message says what is missing
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TargetError(f"linking for target {profile.name} failed: {first}") from None


def _calibration_samples(imported, items: list, log) -> list[list[np.ndarray]]:
    """Samples of main's inputs from `items` (.npy paths or arrays: one sample, or a batch of
    them, each), else seeded random inputs."""
    specs = imported.inputs
    if not items:
        log(
            "warning: no --calibrate samples given; calibrating activation ranges on "
            f"{RANDOM_CALIBRATION_SAMPLES} seeded random inputs (accuracy will suffer)"
        )
        return [
            list(deploy.random_inputs([spec.to_json() for spec in specs], seed).values())
            for seed in range(RANDOM_CALIBRATION_SAMPLES)
        ]
    if len(specs) != 1:
        raise OptionError("--calibrate takes samples for single-input models only")
    spec = specs[0]
    samples = []
    for item in items:
        name = "calibration array" if isinstance(item, np.ndarray) else str(item)
        try:
            array = item if isinstance(item, np.ndarray) else np.load(item, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(f"{name}: not a .npy array ({type(err).__name__})") from None
        batch = array.reshape((-1, *spec.shape)) if array.size % np.prod(spec.shape) == 0 else None
        if batch is None:
            raise InputError(f"{name}: shape {array.shape} does not fit input '{spec.name}' {spec.shape}")
        samples.extend([[sample.astype(spec.dtype)] for sample in batch])
    return samples
