"""Model file → artifact: the driver behind `tvmbits compile` and the Python API.

    load ONNX ─▶ rewrite QONNX/QDQ quantizers (facts per layer) ─▶ import to Relax
      ─▶ NHWC layouts ─▶ find layers ─▶ assign bits (from the facts, or --wbits/--abits)
      ─▶ calibrate (post-training only) ─▶ lower to low-bit ops ─▶ legalize, fuse, schedule
      ─▶ build for the profile's target ─▶ link (cross compiler) ─▶ model.tar
"""

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tvm
from tvm import relax

import tvmbits
from tvmbits import artifact, tuning_log
from tvmbits.errors import InputError, OptionError, TargetError
from tvmbits.frontend import onnx as onnx_frontend
from tvmbits.passes.assign_bits import assign_bits, check_bits
from tvmbits.passes.calibrate import calibrate, needs_calibration
from tvmbits.passes.layers import find_layers
from tvmbits.passes.lower_lowbit import lower_lowbit
from tvmbits.passes.pipeline import lower_pipeline, schedule, to_nhwc
from tvmbits.schedules.byte_dot import byte_dot
from tvmbits.targets import profile as profiles

RANDOM_CALIBRATION_SAMPLES = 4


@dataclass
class CompileOptions:
    target: str = "x86_64"
    wbits: int | None = None
    abits: int | None = None
    all_layers: bool = False
    kernel: str = "auto"
    calibrate: list[str] = field(default_factory=list)  # .npy files
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tuning_log: str | None = None  # a tuning log folder; None: the profile's shipped log, if any
    use_tuning: bool = True


@dataclass
class Lowered:
    """A model imported and rewritten into low-bit operators, not yet scheduled or built."""

    mod: tvm.IRModule
    plans: list
    imported: onnx_frontend.ImportedModel
    profile: profiles.Profile
    target: tvm.target.Target
    source: str


def lower_model(
    model_path: str | Path, options: CompileOptions, log: Callable[[str], None] = lambda message: None
) -> Lowered:
    """Import `model_path`, plan every conv/dense layer and lower the planned ones (used by
    `compile_model` and by the tuner, which must see the same kernels)."""
    profile = profiles.load(options.target)
    check_bits("--wbits", options.wbits)
    check_bits("--abits", options.abits)
    model = onnx_frontend.load(model_path)
    source = str(model_path)
    log(f"importing {source}")
    imported = onnx_frontend.import_model(model, source, options.input_shapes)
    target = profile.tvm_target()
    mod = to_nhwc(imported.mod, target)
    layers = find_layers(mod["main"], imported.layer_names)
    plans = assign_bits(
        layers, options.wbits, options.abits, options.all_layers, options.kernel, imported.facts, byte_dot(target)
    )
    if needs_calibration(plans):
        samples = _calibration_samples(imported, options.calibrate, log)
        log(f"calibrating {len(needs_calibration(plans))} layers on {len(samples)} samples")
        calibrate(mod, plans, samples)
    lowered = sum(plan.kernel != "float" for plan in plans)
    log(f"lowering {lowered} of {len(plans)} conv/dense layers to low-bit kernels")
    mod = lower_lowbit(plans)(mod)
    return Lowered(mod, plans, imported, profile, target, source)


def compile_model(
    model_path: str | Path,
    output: str | Path,
    options: CompileOptions,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Compile `model_path` into the artifact `output`; returns the artifact's metadata."""
    lowered = lower_model(model_path, options, log)
    profile, target = lowered.profile, lowered.target
    log(f"building for {profile.name} ({target.kind.name})")
    database, log_path = _tuning_database(options, profile, log)
    mod = schedule(lowered.mod, target, database)
    with target:
        executable = tvm.compile(mod, target=target, relax_pipeline=lower_pipeline(target))
    metadata = {
        "tvmbits_version": tvmbits.__version__,
        "tvm_version": tvm.__version__,
        "profile": profile.name,
        "arch": profile.arch,
        "device": profile.device,
        "target": str(target),
        "source": Path(lowered.source).name,
        "inputs": [spec.to_json() for spec in lowered.imported.inputs],
        "outputs": [spec.to_json() for spec in lowered.imported.outputs],
        "layers": [plan.to_json() for plan in lowered.plans],
        "tuning_log": log_path,
    }
    with tempfile.TemporaryDirectory(prefix="tvmbits-") as tmp:
        library = Path(tmp) / artifact.LIBRARY
        _export(executable, library, profile)
        artifact.write_artifact(Path(output), library, metadata)
    log(f"wrote {output}")
    return metadata


def _tuning_database(options: CompileOptions, profile, log):
    """The tuning database to apply and its path, or (None, None)."""
    if not options.use_tuning:
        return None, None
    path = Path(options.tuning_log) if options.tuning_log else tuning_log.default_log(profile.name)
    if not options.tuning_log and not path.is_dir():
        return None, None
    log(f"applying tuning log {path}")
    return tuning_log.open_database(path, log), str(path)


def _export(executable, library: Path, profile) -> None:
    fcompile = None
    if profile.cross_compiler:
        fcompile = tvm.support.cc.cross_compiler(profile.cross_compiler)
    try:
        executable.export_library(str(library), fcompile=fcompile)
    except Exception as err:  # the linker's own message says what is missing
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TargetError(f"linking for target {profile.name} failed: {first}") from None


def _calibration_samples(imported, files: list[str], log) -> list[list[np.ndarray]]:
    specs = imported.inputs
    if not files:
        log(
            "warning: no --calibrate samples given; calibrating activation ranges on "
            f"{RANDOM_CALIBRATION_SAMPLES} seeded random inputs (accuracy will suffer)"
        )
        return [
            list(onnx_frontend.random_inputs(specs, seed).values())
            for seed in range(RANDOM_CALIBRATION_SAMPLES)
        ]
    if len(specs) != 1:
        raise OptionError("--calibrate takes samples for single-input models only")
    spec = specs[0]
    samples = []
    for path in files:
        try:
            array = np.load(path)
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: not a .npy array ({err})") from None
        batch = array.reshape((-1, *spec.shape)) if array.size % np.prod(spec.shape) == 0 else None
        if batch is None:
            raise InputError(f"{path}: shape {array.shape} does not fit input '{spec.name}' {spec.shape}")
        samples.extend([[sample.astype(spec.dtype)] for sample in batch])
    return samples
