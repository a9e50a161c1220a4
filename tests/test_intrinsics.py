"""The tensor intrinsics are registered with TVM when a build for a target that uses them needs
them (`schedules.register_intrinsics`, the schedules before tensorizing), not when tvmbits is
imported: parsing their TVMScript took 12 s of every CLI start."""

import subprocess
import sys

import pytest

FAMILIES = {
    "vnni": ("tvmbits_vnni_dot_16x4",),
    "arm": ("tvmbits_arm_sdot_16x4", "tvmbits_arm_udot_16x4", "tvmbits_arm_sdot_lane_16x4",
            "tvmbits_arm_udot_lane_16x4", "tvmbits_arm_sdot_lane_8x4", "tvmbits_arm_udot_lane_8x4",
            "tvmbits_arm_neon_16x4", "tvmbits_arm_neon_bytes_16x4"),
    "cuda": ("tvmbits_mma_m8n8k128_b1_and_popc", "tvmbits_mma_m8n8k16_u8s8", "tvmbits_mma_m8n8_fill_s32"),
}
REGISTERED = """
import sys
from tvm.s_tir import TensorIntrin
FAMILIES = {families!r}
{setup}
print(sorted(family for family, names in FAMILIES.items()
             if all(TensorIntrin.get(name, allow_missing=True) is not None for name in names)))
"""


def registered_after(setup: str) -> list[str]:
    """The intrinsic families registered in a fresh process after running `setup`."""
    code = REGISTERED.format(families=FAMILIES, setup=setup)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return eval(done.stdout.strip().splitlines()[-1])


def test_importing_tvmbits_registers_none():
    assert registered_after("import tvmbits, tvmbits.cli, tvmbits.compiler, tvmbits.tune, tvmbits.schedules") == []


SAPPHIRE_RAPIDS = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "sapphirerapids"}  # AVX512-VNNI
HASWELL = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "haswell"}


@pytest.mark.parametrize(
    "target, families",
    [(SAPPHIRE_RAPIDS, ["vnni"]), (HASWELL, []), ("rpi5", ["arm"]), ("rpi4", ["arm"]), ("cuda", ["cuda"])],
)
def test_a_target_registers_its_own_family(target, families):
    setup = (
        "import tvm\n"
        "from tvmbits.schedules import register_intrinsics\n"
        "from tvmbits.targets import profile\n"
        f"target = {target!r}\n"
        "register_intrinsics(tvm.target.Target(target) if isinstance(target, dict) "
        "else profile.load(target).tvm_target())"
    )
    assert registered_after(setup) == families


def test_tuning_skips_the_intrinsics_tvm_ships():
    """MetaSchedule's TuneContext imports `tvm.s_tir.tensor_intrin`, whose __init__ parses every
    intrinsic TVM ships (25-40 s of each tune run): `tvmbits tune` enters the package without it,
    and a submodule still imports (and registers its intrinsics) when asked for."""
    code = """
import sys
from tvm.s_tir import TensorIntrin
from tvmbits import tune
tune._without_tvm_intrinsics()
import tvm.s_tir.tensor_intrin
print(sorted(m.rsplit(".", 1)[-1] for m in sys.modules if m.startswith("tvm.s_tir.tensor_intrin.")))
import tvm.s_tir.tensor_intrin.x86
print(TensorIntrin.get("dot_16x4_vnni", allow_missing=True) is not None)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["[]", "True"]
