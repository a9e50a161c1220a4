"""`tvmbits check`: run each low-bit layer's kernels, built for a profile, on an emulated CPU of
that profile and compare them with the integer reference, layer by layer.

Per layer: the layer alone is lowered by the compiler's passes and built for the profile
(`layer_program`), run on a seeded input under qemu user mode with the profile's CPU model
(`emulator`: a C harness with a libtvm_ffi built for the profile, since armhf has no TVM runtime),
and compared with float32(integer reference) · scale; it passes when every output is within
1 ulp of float32 (the float epilogue; the integer accumulation itself must be exact).
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tvmbits.check import layer_program
from tvmbits.check.emulator import Emulator


@dataclass
class LayerResult:
    name: str
    kernel: str
    bits: str  # "activation signed4, weight bipolar1"
    shape: str  # "conv2d 1x8x8x16 -> 1x8x8x16, 3x3 stride 1"
    passed: bool
    max_difference: float | None  # None when the kernel did not run
    error: str | None = None

    def line(self) -> str:
        diff = "-" if self.max_difference is None else f"{self.max_difference:g}"
        verdict = "pass" if self.passed else "FAIL"
        tail = f"  ({self.error})" if self.error else ""
        return f"{self.name}  {self.kernel}  {self.bits}  {self.shape}  {verdict}  max difference {diff}{tail}"


def check_model(
    model_path: str | Path, options, seed: int = 0, log: Callable[[str], None] = lambda message: None
) -> list[LayerResult]:
    """Check every low-bit layer of `model_path` compiled with `options` (a CompileOptions; its
    target names the profile) under emulation; one LayerResult per low-bit layer."""
    from tvmbits.targets import profile as profiles

    profile = profiles.load(options.target)
    Emulator.check_profile(profile)
    plans = _layer_plans(model_path, options, log)  # a bad model fails before any build
    emulator = Emulator(profile, log)
    target = profile.tvm_target()
    results = []
    with tempfile.TemporaryDirectory(prefix="tvmbits-check-") as tmp:
        for i, plan in enumerate(plans):
            log(f"[{i + 1}/{len(plans)}] {plan.name}: building for {profile.name} and running under qemu ({profile.qemu_cpu})")
            workdir = Path(tmp) / f"layer{i}"
            workdir.mkdir()
            results.append(check_layer(plan, profile, target, emulator, workdir, seed + i))
    return results


def check_layer(plan, profile, target, emulator: Emulator, workdir: Path, seed: int) -> LayerResult:
    """Build `plan`'s layer for `profile`, run it under `emulator` on a seeded input, compare."""
    program = _program(plan, profile, target, workdir / "kernels.so")
    x, values = layer_program.layer_input(plan, seed)
    want = layer_program.expected(plan, values)
    bits = f"activation {plan.act.kind}{plan.act.bits}, weight {plan.wgt.kind}{plan.wgt.bits}"
    shape = _shape(plan, want.shape)
    try:
        got = emulator.run(program, workdir, {program.input: x})
    except RuntimeError as err:
        return LayerResult(plan.name, plan.kernel, bits, shape, False, None, str(err))
    difference = np.abs(got.astype(np.float64) - want.astype(np.float64))
    passed = bool(np.all(difference <= np.spacing(np.abs(want)).astype(np.float64)))
    return LayerResult(plan.name, plan.kernel, bits, shape, passed, float(difference.max()))


def _program(plan, profile, target, library: Path) -> "layer_program.Program":
    """The built layer (a seam: the tests corrupt a weight here)."""
    return layer_program.build(plan, profile, target, library)


def _layer_plans(model_path, options, log) -> list:
    """The low-bit layer plans the compiler makes of `model_path` with `options`."""
    from tvmbits.compiler import plan_model

    return [plan for plan in plan_model(model_path, options, log).plans if plan.kernel != "float"]


def _shape(plan, out_shape) -> str:
    data = "x".join(str(int(d)) for d in plan.layer.call.args[0].ty.shape)
    out = "x".join(map(str, out_shape))
    if plan.layer.op != "conv2d":
        return f"dense {data} -> {out}"
    kh, kw = plan.weight_values.shape[1:3]
    sh, sw = plan.layer.attrs["strides"]
    pad = "-".join(map(str, plan.layer.attrs["padding"]))
    return f"conv2d {data} -> {out} k{kh}x{kw} s{sh}x{sw} p{pad}"
