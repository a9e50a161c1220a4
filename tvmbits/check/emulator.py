"""Run kernel functions on an emulated CPU of a profile: qemu user mode and a small C harness.

The kernel libraries TVM builds for a CPU target import one function from libtvm_ffi
(TVMFFIErrorSetRaisedFromCStrParts, to raise errors) and leave three pointers for TVM's library
loader to fill (parallel launch, workspace alloc/free), which live in libtvm_runtime. There is
no TVM runtime for armhf, so `harness.c` stands in for the loader: it is cross-compiled with the
profile's compiler, links a libtvm_ffi built for the profile from the tvm-ffi sources (the
version installed here, from PyPI's sdist), fills the three pointers, and calls the functions
with DLTensor arguments. It runs under `qemu-<arch>` with the profile's `qemu_cpu` and the
cross toolchain's libraries (`-L /usr/<triple>`).

Built once and cached in `<cache>/check/` (`<cache>` as for the emulated boards: `$TVMBITS_CACHE`,
else `.cache` of the checkout): the tvm-ffi sources, `<triple>/libtvm_ffi.so` (about 3 min on
two cores) and `<triple>/harness-<hash of harness.c>`. scripts/setup.sh builds the armv7 ones.
"""

import fcntl
import hashlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from tvmbits import tar_extract
from tvmbits.board.emulate import cache_dir, run_quiet
from tvmbits.errors import TargetError

HARNESS = Path(__file__).with_name("harness.c")
QEMU = {"armv7l": "qemu-arm", "aarch64": "qemu-aarch64"}
MIN_CMAKE = (3, 26)  # tvm-ffi's CMakeLists asks for it; Debian bookworm has 3.25 (the `check` extra: PyPI's)
# the `task` count a parallel launch is split into when the kernel leaves it to the runtime:
# a Raspberry Pi's four cores
TASKS = 4
RUN_TIMEOUT_S = 600
# DLDataType codes
DL_CODES = {"i": 0, "u": 1, "f": 2}


class Emulator:
    """The harness for `profile`, built if not cached; `run(program, dir)` runs one program."""

    def __init__(self, profile, log=print):
        self.check_profile(profile)
        self.profile = profile
        self.triple = profile.cross_compiler.removesuffix("-g++")
        self.qemu = _qemu(profile.arch)
        self.sysroot = Path("/usr") / self.triple
        self.lib_dir, self.harness = build(profile, log)

    @staticmethod
    def check_profile(profile) -> None:
        """Raise TargetError unless `profile` can be emulated here."""
        if profile.device != "cpu" or not profile.cross_compiler or not profile.qemu_cpu:
            raise TargetError(
                f"target {profile.name}: kernels can be checked under emulation only for CPU profiles "
                "with a cross_compiler and a qemu_cpu"
            )
        if profile.arch not in QEMU:
            raise TargetError(f"target {profile.name}: no qemu user mode emulator for arch {profile.arch}")

    def run(self, program, workdir: Path, inputs: dict[int, np.ndarray]) -> np.ndarray:
        """Run `program` (layer_program.Program) with `inputs` (tensor index → array); returns
        the output tensor. Raises RuntimeError with the harness's message if it fails."""
        lines = [f"lib {program.library}"]
        for i, tensor in enumerate(program.tensors):
            array = inputs.get(i, tensor)
            if isinstance(array, np.ndarray):
                path = workdir / f"t{i}.bin"
                np.ascontiguousarray(array).tofile(path)
                shape, dtype = array.shape, array.dtype
            else:
                path, (shape, dtype) = "-", tensor
            dtype = np.dtype(dtype)
            code = DL_CODES[dtype.kind]
            fields = ["tensor", i, code, dtype.itemsize * 8, 1, len(shape), *shape, path]
            lines.append(" ".join(map(str, fields)))
        for name, ids in program.calls:
            lines.append(f"call {name} {len(ids)} {' '.join(map(str, ids))}")
        out = workdir / "out.bin"
        lines.append(f"write {program.output} {out}")
        (workdir / "program.txt").write_text("\n".join(lines) + "\n")
        cmd = [
            self.qemu, "-cpu", self.profile.qemu_cpu, "-L", str(self.sysroot),
            "-E", f"LD_LIBRARY_PATH={self.lib_dir}", str(self.harness), str(workdir / "program.txt"), str(TASKS),
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"still running after {RUN_TIMEOUT_S} s under {self.qemu}") from None
        if done.returncode != 0:
            # the harness's message (tvm-ffi's error can span lines), else qemu's or the exit code
            lines = done.stderr.strip().splitlines()
            start = next((i for i, line in enumerate(lines) if line.startswith("harness: ")), max(len(lines) - 1, 0))
            message = " ".join(line.strip() for line in lines[start:]) or f"exit code {done.returncode}"
            raise RuntimeError(message)
        shape, dtype = program.tensors[program.output]
        return np.fromfile(out, dtype).reshape(shape)


def build(profile, log=print) -> tuple[Path, Path]:
    """(folder of the profile's libtvm_ffi.so, the harness executable), built if not cached."""
    triple = profile.cross_compiler.removesuffix("-g++")
    version = importlib.metadata.version("apache-tvm-ffi")
    root = cache_dir() / "check"
    out = root / triple
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sources = _sources(root, version, log)
        lib = out / f"tvm-ffi-{version}"
        if not (lib / "libtvm_ffi.so").is_file():
            _build_tvm_ffi(sources, lib, profile, triple, log)
        digest = hashlib.sha256(HARNESS.read_bytes()).hexdigest()[:12]
        harness = out / f"harness-{digest}"
        if not harness.is_file():
            gcc = profile.cross_compiler.removesuffix("g++") + "gcc"
            _step(
                [gcc, "-O2", "-std=gnu11", "-Wall", f"-I{sources / 'include'}",
                 f"-I{sources / '3rdparty' / 'dlpack' / 'include'}", "-o", f"{harness}.tmp", str(HARNESS),
                 f"-L{lib}", "-ltvm_ffi", "-ldl"],
                "cross-compiling the check harness",
            )
            Path(f"{harness}.tmp").rename(harness)
    return lib, harness


def _sources(root: Path, version: str, log) -> Path:
    """The tvm-ffi source tree of `version` (PyPI's sdist: C++ sources and its CMake build)."""
    sources = root / f"apache_tvm_ffi-{version}"
    if (sources / "CMakeLists.txt").is_file():
        return sources
    log(f"downloading the apache-tvm-ffi {version} sources from PyPI (about 40 s)")
    with tempfile.TemporaryDirectory(prefix="tvmbits-tvm-ffi-") as tmp:
        _step(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "apache-tvm-ffi",
             "-d", tmp, f"apache-tvm-ffi=={version}"],
            "downloading the apache-tvm-ffi sources",
        )
        sdist = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar_extract.extract(tar, tmp)
        extracted = next(p for p in Path(tmp).iterdir() if p.is_dir())
        shutil.move(str(extracted), sources)
    return sources


def _build_tvm_ffi(sources: Path, lib: Path, profile, triple: str, log) -> None:
    cmake, ninja = _tool("cmake"), _tool("ninja")
    version = re.search(r"(\d+)\.(\d+)", subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout)
    if version is None or tuple(map(int, version.groups())) < MIN_CMAKE:
        raise TargetError(
            f"building libtvm_ffi for {profile.name} needs cmake >= 3.26 ({cmake} is older): "
            "pip install 'cmake>=3.26,<4' ninja (scripts/setup.sh does)"
        )
    started = time.monotonic()
    log(f"building libtvm_ffi for {profile.name} ({triple}) from the tvm-ffi sources (about 3 min, once)")
    with tempfile.TemporaryDirectory(prefix="tvmbits-tvm-ffi-build-") as build_dir:
        _step(
            [cmake, "-S", str(sources), "-B", build_dir, "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}",
             "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_SYSTEM_NAME=Linux",
             f"-DCMAKE_SYSTEM_PROCESSOR={profile.arch}",
             f"-DCMAKE_C_COMPILER={triple}-gcc", f"-DCMAKE_CXX_COMPILER={triple}-g++",
             # the C ABI only: no libbacktrace (an autotools build), no extra C++ API
             "-DTVM_FFI_USE_LIBBACKTRACE=OFF", "-DTVM_FFI_BACKTRACE_ON_SEGFAULT=OFF",
             "-DTVM_FFI_USE_EXTRA_CXX_API=OFF"],
            "configuring libtvm_ffi",
        )
        _step([cmake, "--build", build_dir, "--target", "tvm_ffi_shared", "-j2"], "building libtvm_ffi")
        staging = Path(f"{lib}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        shutil.copy2(Path(build_dir) / "lib" / "libtvm_ffi.so", staging / "libtvm_ffi.so")
        staging.rename(lib)
    log(f"built {lib / 'libtvm_ffi.so'} ({time.monotonic() - started:.0f} s)")


def _tool(name: str) -> str:
    """`name` from this Python's environment (the PyPI cmake/ninja), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise TargetError(f"{name} not found: pip install 'cmake>=3.26,<4' ninja (scripts/setup.sh does)")
    return found


def _qemu(arch: str) -> str:
    for name in (QEMU[arch], f"{QEMU[arch]}-static"):
        if shutil.which(name):
            return name
    raise TargetError(f"{QEMU[arch]} not found: apt-get install qemu-user-static (scripts/setup.sh does)")


def _step(cmd: list[str], what: str) -> None:
    run_quiet(cmd, what, TargetError)
