"""Target profiles: one TOML file per target in this folder (adding a board is adding a file).

A profile names the TVM target (a JSON dict), the host target for device code, the cross
compiler that links the library, the device kind the runtime opens (`cpu` or `cuda`), the CPU
architecture of the device as `uname -m` prints it (checked before deploying), the RPC key
boards of this kind register with, the default number of tuning trials, and for Arm boards the
QEMU CPU model (`qemu_cpu`) that `tvmbits board emulate` and `tvmbits check` run the board's
code on, so that a kernel using an instruction the board lacks fails under emulation too.

The value "native" stands for what this machine has: as `arch`, its architecture (`uname -m`);
in a target, the host CPU model and core count for LLVM, the local GPU's compute capability for
CUDA (without a GPU here, the profile's `fallback_arch`, else `CUDA_FALLBACK_ARCH`). A CUDA
profile's architecture can also be named when it is loaded (`load(..., gpu_arch="sm_80")`,
`tvmbits compile --arch sm_80`): it decides the tensor-core instructions the kernels use. The `host` profile is all native, so it builds for x86-64 and AArch64 machines alike.
`native` CPU values of a profile for another architecture than this machine's (`x86_64` on an
AArch64 machine) are dropped: LLVM's generic CPU of the profile's triple.
"""

import dataclasses
import os
import platform
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tvm

from tvmbits.errors import TargetError

PROFILE_DIR = Path(__file__).parent
CUDA_FALLBACK_ARCH = "sm_90"
GPU_ARCH = re.compile(r"sm_[0-9]{2,3}[a-z]?")  # what `--arch` takes: sm_80, sm_89, sm_90, sm_90a


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    arch: str
    device: str
    target: dict
    host: dict | None
    cross_compiler: str | None
    rpc_key: str
    tuning_trials: int
    qemu_cpu: str | None = None  # QEMU's -cpu model of the board (Arm profiles)
    fallback_arch: str | None = None  # CUDA: the architecture "native" means with no GPU here

    @property
    def native(self) -> bool:
        """Whether the profile's code runs on this machine's CPU (same architecture)."""
        return self.arch == host_arch()

    @property
    def log_name(self) -> str:
        """The name of the profile's tuning logs (`tuning_logs/<log_name>`): the profile's name,
        and for a CUDA profile its architecture too (`cuda-sm_80`), whose kernels differ."""
        if self.target.get("kind") != "cuda":
            return self.name
        return f"{self.name}-{self.tvm_target().attrs['arch']}"

    def tvm_target(self) -> tvm.target.Target:
        host = _resolve(self.host, self.native) if self.host else None
        return tvm.target.Target(_resolve(self.target, self.native, self.fallback_arch), host=host)


def host_arch() -> str:
    """This machine's architecture as `uname -m` prints it (x86_64, aarch64)."""
    return platform.machine()


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load(name_or_path: str, gpu_arch: str | None = None) -> Profile:
    """Load a profile by name (`arm64`) or from a TOML file path; `gpu_arch` (sm_80, ...) replaces
    a CUDA profile's architecture (TargetError for another kind of profile or a malformed name)."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise TargetError(
            f"unknown target '{name_or_path}': choose one of {', '.join(available())} "
            "or give a profile .toml file"
        )
    try:
        data = tomllib.loads(path.read_text())
        profile = Profile(
            name=data["name"],
            description=data.get("description", ""),
            arch=host_arch() if data["arch"] == "native" else data["arch"],
            device=data.get("device", "cpu"),
            target=data["target"],
            host=data.get("host"),
            cross_compiler=data.get("cross_compiler"),
            rpc_key=data.get("rpc_key", data["name"]),
            tuning_trials=int(data.get("tuning_trials", 1000)),
            qemu_cpu=data.get("qemu_cpu"),
            fallback_arch=data.get("fallback_arch"),
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError, OSError, UnicodeDecodeError) as err:
        raise TargetError(f"{path}: not a valid target profile ({_one_line(err)})") from None
    if gpu_arch is not None:
        profile = with_gpu_arch(profile, gpu_arch, path)
    check_profile(profile, path)
    return profile


def with_gpu_arch(profile: Profile, gpu_arch: str, path: Path | str = "") -> Profile:
    """`profile` (a CUDA one) built for the GPU architecture `gpu_arch` instead of its own."""
    where = path or profile.name
    if profile.target.get("kind") != "cuda":
        raise TargetError(f"--arch {gpu_arch}: target {where} is not a CUDA profile")
    if not GPU_ARCH.fullmatch(gpu_arch):
        raise TargetError(f"--arch {gpu_arch}: expected a CUDA architecture such as sm_80, sm_89 or sm_90")
    return dataclasses.replace(profile, target={**profile.target, "arch": gpu_arch})


def check_profile(profile: Profile, path: Path) -> None:
    """Refuse, when it is loaded (before any compile starts), a profile TVM cannot make a target
    of (an unknown `kind`, a mistyped option) or whose device kind the runtime cannot open."""
    if profile.device not in ("cpu", "cuda"):
        raise TargetError(f"{path}: device '{profile.device}' is not cpu or cuda")
    if not isinstance(profile.target, dict) or not (profile.host is None or isinstance(profile.host, dict)):
        raise TargetError(f"{path}: target and host must be TOML tables")
    try:
        profile.tvm_target()
    except Exception as err:  # TVM raises ValueError/TypeError/TVMError for a bad target dict
        raise TargetError(f"{path}: not a valid TVM target ({_one_line(err)})") from None


def _one_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _resolve(target: dict, native: bool = True, fallback_arch: str | None = None) -> dict:
    resolved = dict(target)
    if resolved.get("mcpu") == "native":
        if native:
            resolved["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
        else:
            del resolved["mcpu"]
    if resolved.get("num-cores") == "native":
        resolved["num-cores"] = os.cpu_count()
    if resolved.get("kind") == "cuda" and resolved.get("arch") == "native":
        resolved["arch"] = _local_cuda_arch(fallback_arch or CUDA_FALLBACK_ARCH)
    return resolved


def _local_cuda_arch(fallback: str) -> str:
    dev = tvm.cuda(0)
    if not dev.exist:
        return fallback
    return "sm_" + dev.compute_version.replace(".", "")
