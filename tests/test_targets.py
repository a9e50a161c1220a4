import platform

import pytest

from tvmbits.errors import UserError
from tvmbits.targets import profile


def test_every_shipped_profile_builds_a_tvm_target():
    assert {"host", "x86_64", "arm64", "rpi3", "rpi4", "rpi5", "armv7", "cuda"} <= set(profile.available())
    for name in profile.available():
        assert profile.load(name).tvm_target() is not None


def test_native_values_are_resolved_for_the_host():
    host = profile.load("host")
    assert host.arch == platform.machine() and host.native and host.cross_compiler is None
    target = host.tvm_target()
    assert target.attrs["mcpu"] != "native"
    assert int(target.attrs["num-cores"]) >= 1


def test_x86_64_is_x86_64_on_any_machine():
    x86_64 = profile.load("x86_64")
    target = x86_64.tvm_target()
    assert x86_64.arch == "x86_64" and str(target.attrs["mtriple"]).startswith("x86_64")
    if platform.machine() != "x86_64":  # a generic x86-64, not this machine's CPU model
        assert "mcpu" not in target.attrs


@pytest.mark.parametrize("name, cpu, dotprod", [("rpi3", "cortex-a53", False), ("rpi4", "cortex-a72", False),
                                                ("rpi5", "cortex-a76", True), ("arm64", "cortex-a53", False)])
def test_board_profiles_name_llvm_and_qemu_cpus(name, cpu, dotprod):
    board = profile.load(name)
    target = board.tvm_target()
    assert (board.arch, board.cross_compiler, board.qemu_cpu) == ("aarch64", "aarch64-linux-gnu-g++", cpu)
    assert target.attrs.get("mcpu", cpu) == cpu  # arm64 is LLVM's generic Armv8-A
    assert bool(target.attrs["feature.has_dotprod"]) == dotprod


def test_arm_profiles_name_their_cross_compilers_and_abi():
    arm64, armv7 = profile.load("arm64"), profile.load("armv7")
    assert (arm64.arch, arm64.cross_compiler) == ("aarch64", "aarch64-linux-gnu-g++")
    assert (armv7.arch, armv7.cross_compiler) == ("armv7l", "arm-linux-gnueabihf-g++")
    assert armv7.target["mfloat-abi"] == "hard"


def test_unknown_target_is_a_user_error():
    with pytest.raises(UserError, match="unknown target 'riscv'"):
        profile.load("riscv")


def test_a_profile_file_can_be_given_by_path(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text('name = "board"\narch = "aarch64"\n[target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\n')
    assert profile.load(str(path)).arch == "aarch64"
    path.write_text("name = ")
    with pytest.raises(UserError, match="not a valid target profile"):
        profile.load(str(path))


def test_cuda_architecture_is_the_local_gpus_else_the_profiles_fallback():
    cuda = profile.load("cuda")
    import tvm

    expected = cuda.fallback_arch if not tvm.cuda(0).exist else "sm_" + tvm.cuda(0).compute_version.replace(".", "")
    assert cuda.fallback_arch == "sm_90" and cuda.tvm_target().attrs["arch"] == expected


@pytest.mark.parametrize("arch", ["sm_80", "sm_89", "sm_90"])
def test_a_cuda_architecture_can_be_named(arch):
    assert profile.load("cuda", gpu_arch=arch).tvm_target().attrs["arch"] == arch


@pytest.mark.parametrize("name, arch, message", [("cuda", "80", "expected a CUDA architecture"),
                                                 ("x86_64", "sm_80", "is not a CUDA profile")])
def test_a_bad_cuda_architecture_is_a_user_error(name, arch, message):
    with pytest.raises(UserError, match=message):
        profile.load(name, gpu_arch=arch)
