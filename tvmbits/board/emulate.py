"""An emulated arm64 board on this machine: a Debian root file system run under qemu-user.

A board is named by its target profile (`arm64`, `rpi3`, `rpi4`, `rpi5`, or a profile .toml of an
aarch64 board): all of them share the root file system of their architecture, and each runs on
the QEMU CPU model its profile names (`qemu_cpu`: `cortex-a53`, `cortex-a72`, `cortex-a76`), so an
instruction the board's CPU lacks (SDOT on a Cortex-A72) stops the emulated board as it would
stop the real one (SIGILL).

`build(arch)` makes, once, a Debian bookworm root file system for the board's architecture with
debootstrap (from the Debian mirror apt is configured with), the board's TVM wheels in a venv at
`/opt/tvm`, and tvmbits' board side (`tvmbits board serve`, which needs only apache-tvm) in that
venv's site-packages. The tree is cached at `<cache>/boards/<arch>` and reused; `<cache>` is
`$TVMBITS_CACHE`, else `.cache` in the tvmbits source checkout, else `~/.cache/tvmbits`. A build
goes into a temporary folder renamed into place at the end, under a lock, so an interrupted or
concurrent build never leaves a half-made board behind.

`start(profile, port)` runs `tvmbits board serve` in that tree with chroot, its binaries executed by
qemu-user through binfmt_misc (on the profile's CPU model, through qemu's QEMU_CPU), in its own process group and its own mount namespace (which holds
the board's /proc and goes away with the board). `stop` ends the whole group: TVM's server forks
worker processes that outlive their parent.

Needs root (debootstrap, chroot, mount) and the Debian packages scripts/setup.sh installs.
Only stdlib at import: this module is also copied onto the board with the rest of
`tvmbits/board/` (the profiles are read, on this machine only, when a board is named).
"""

import ctypes
import fcntl
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tvmbits.errors import BoardError

SUITE = "bookworm"
PYTHON = "3.11"
# apache-tvm 0.27 needs apache-tvm-ffi >= 0.1.14.post0; 0.1.15 crashes MetaSchedule (TVM027.md)
WHEELS = (
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post1",
    "numpy",
    "psutil",
    "cloudpickle",
    "tornado",
    "ml_dtypes",
    "typing_extensions",
)
VENV = "/opt/tvm"
# what the board runs: the CLI shell and the board side, none of which imports onnx or xgboost
BOARD_FILES = ("__init__.py", "__main__.py", "cli.py", "errors.py", "threads.py", "board")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class BoardArch:
    name: str  # tvmbits target name
    debian: str  # Debian architecture
    qemu: str  # binfmt_misc entry of qemu-user-static
    wheel_platforms: tuple[str, ...]


ARCHS = {
    "arm64": BoardArch("arm64", "arm64", "qemu-aarch64", ("manylinux_2_28_aarch64", "manylinux2014_aarch64")),
}
NOT_EMULATED = {
    # tvm-ffi cross-builds for armhf from its wheel's sources, but apache-tvm has no sdist and its
    # wheels ship src/runtime without the headers it includes (tvm/support/io.h, src/support/*.h)
    "armv7": "PyPI has no armv7 (armhf) build of apache-tvm, and its runtime cannot be cross-built "
    "from the sources its wheels ship (they lack tvm/support/io.h and src/support/); use arm64",
}


def cache_dir() -> Path:
    """Where built boards are kept (see the module docstring)."""
    if os.environ.get("TVMBITS_CACHE"):
        return Path(os.environ["TVMBITS_CACHE"])
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "tvmbits").is_dir():
        return checkout / ".cache"
    return Path.home() / ".cache" / "tvmbits"


def board_arch(name: str) -> BoardArch:
    """The emulated board architecture of `name`: a board architecture (`arm64`) or a target
    profile whose `arch` is one."""
    if name not in ARCHS and name not in NOT_EMULATED:
        name = _profile_board(name)[0]
    if name in NOT_EMULATED:
        raise BoardError(f"cannot emulate {name}: {NOT_EMULATED[name]}")
    if name not in ARCHS:
        raise BoardError(f"cannot emulate '{name}': emulated boards are {', '.join(ARCHS)}")
    return ARCHS[name]


def build(name: str, log=print) -> Path:
    """The root file system of the emulated `name` board, built first if it is not cached."""
    arch = board_arch(name)
    _check_host(arch)
    _enable_binfmt(arch)  # debootstrap's second stage runs the board's binaries
    boards = cache_dir() / "boards"
    boards.mkdir(parents=True, exist_ok=True)
    root = boards / arch.name
    with open(boards / f"{arch.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another build of the {arch.name} board to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if root.is_dir():
            return root
        for stale in boards.glob(f"{arch.name}.partial*"):
            _remove_tree(stale)
        partial = boards / f"{arch.name}.partial"
        started = time.monotonic()
        log_path = boards / f"{arch.name}-build.log"
        with open(log_path, "w", buffering=1) as build_log:  # line-buffered: `tail -f` shows progress
            mirror = debian_mirror()
            log(f"building the emulated {arch.name} board in {root} (about 4 min; log: {log_path})")
            log(f"[1/3] debootstrap {SUITE} {arch.debian} from {mirror}")
            _step(
                ["debootstrap", f"--arch={arch.debian}", "--variant=minbase",
                 "--include=python3,python3-venv", SUITE, str(partial), mirror],
                build_log, log_path, log, started,
            )
            log(f"[2/3] downloading the {arch.name} wheels of {' '.join(WHEELS[:2])} and their dependencies")
            wheels = partial / "tmp" / "wheels"
            platforms = [arg for platform in arch.wheel_platforms for arg in ("--platform", platform)]
            _step(
                [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
                 *platforms, "--python-version", PYTHON, "--implementation", "cp", "-d", str(wheels), *WHEELS],
                build_log, log_path, log, started,
            )
            log(f"[3/3] installing them into a venv at {VENV} on the board (under qemu: about 1 min)")
            _step(
                ["chroot", str(partial), "/bin/sh", "-c",
                 f"python3 -m venv {VENV} && {VENV}/bin/pip install -q --disable-pip-version-check "
                 "--no-index /tmp/wheels/*.whl"],
                build_log, log_path, log, started,
            )
            shutil.rmtree(wheels)
        _install_board_side(partial)
        partial.rename(root)
        log(f"the emulated {arch.name} board is built ({time.monotonic() - started:.0f} s)")
    return root


def qemu_cpu(name: str) -> str | None:
    """The QEMU CPU model the board `name` runs on: its profile's `qemu_cpu` (None: QEMU's default)."""
    return None if name in NOT_EMULATED else _profile_board(name)[1]


def board_env(name: str) -> dict[str, str]:
    """The environment that runs the board's binaries on its CPU model: qemu-user reads QEMU_CPU
    (the `-cpu` option) also when binfmt_misc starts it, and chroot passes the environment on."""
    env = dict(os.environ)
    cpu = qemu_cpu(name)
    if cpu:
        env["QEMU_CPU"] = cpu
    else:
        env.pop("QEMU_CPU", None)
    return env


def start(name: str, port: int) -> subprocess.Popen:
    """Start `tvmbits board serve` on the emulated `name` board, listening on 127.0.0.1:`port` of
    this machine (a chroot shares this machine's network), with this checkout's board side.
    Returns the board's process, leader of its own process group; end it with `stop`."""
    root = build(name)
    _install_board_side(root)
    quoted = shlex.quote(str(root))
    serve = f"exec chroot {quoted} {VENV}/bin/python -m tvmbits board serve --host 127.0.0.1 --port {int(port)}"
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
         f"mount -t proc proc {quoted}/proc && {serve}"],
        env=board_env(name),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def run(name: str, command: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run the shell `command` once on the emulated `name` board (in its root file system, on its
    CPU model, with /proc mounted), without a server: for checking cross-built kernels. Files go
    to and from the board through its root file system (`build(name)`). Output is captured."""
    root = build(name)
    quoted = shlex.quote(str(root))
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
         f"mount -t proc proc {quoted}/proc && exec chroot {quoted} /bin/sh -c {shlex.quote(command)}"],
        env=board_env(name), capture_output=True, text=True, timeout=timeout,
    )


def stop(board: subprocess.Popen, grace: float = 5.0) -> None:
    """End the process group that `board` leads: SIGTERM, then SIGKILL after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(board.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            board.poll()  # reap the leader, or the group stays alive as a zombie
            if not _group_alive(board.pid):
                return
            time.sleep(0.1)


def serve(name: str, port: int, log=print) -> None:
    """Run the emulated `name` board (built first if needed) until SIGINT or SIGTERM."""
    build(name, log)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cpu = qemu_cpu(name)
    log(f"starting the emulated {name} board under qemu-user{f' on a {cpu}' if cpu else ''} (about 20 s)")
    board = start(name, port)
    try:
        code = board.wait()
        raise BoardError(f"the emulated {name} board stopped (exit code {code})")
    finally:
        stop(board)


def _profile_board(name: str) -> tuple[str, str | None]:
    """(board architecture, QEMU CPU model) of the target profile `name`."""
    from tvmbits.errors import TargetError
    from tvmbits.targets import profile

    try:
        board = profile.load(name)
    except TargetError:
        raise BoardError(f"cannot emulate '{name}': emulated boards are {', '.join(ARCHS)} "
                         "or a target profile of an aarch64 board (rpi3, rpi4, rpi5)") from None
    archs = {"aarch64": "arm64", "armv7l": "armv7"}
    if board.device != "cpu" or board.arch not in archs:
        raise BoardError(f"cannot emulate '{name}': its profile is for {board.arch} ({board.device}), "
                         "emulated boards are aarch64")
    return archs[board.arch], board.qemu_cpu


def debian_mirror() -> str:
    """The Debian mirror that apt uses for bookworm (/etc/apt/sources.list and sources.list.d)."""
    sources = Path("/etc/apt/sources.list.d")
    files = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list")), *sorted(sources.glob("*.sources"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":  # deb822 paragraphs
            for paragraph in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", paragraph, flags=re.M))
                if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    raise BoardError(f"no Debian {SUITE} mirror in /etc/apt/sources.list or sources.list.d to debootstrap from")


def _check_host(arch: BoardArch) -> None:
    if os.geteuid() != 0:
        raise BoardError("an emulated board needs root (debootstrap, chroot and mount)")
    missing = [tool for tool in ("debootstrap", "chroot", "unshare", "update-binfmts", f"{arch.qemu}-static")
               if shutil.which(tool) is None]
    if missing:
        raise BoardError(f"an emulated board needs {', '.join(missing)}: run scripts/setup.sh")


def _enable_binfmt(arch: BoardArch) -> None:
    """Register qemu-user with binfmt_misc (mounting it first) so the kernel runs the board's
    binaries; qemu-user-static's entries have the F flag, so they work inside a chroot."""
    misc = Path("/proc/sys/fs/binfmt_misc")
    if not (misc / "status").exists():
        run_quiet(["mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)], "mounting binfmt_misc")
    entry = misc / arch.qemu
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        run_quiet(["update-binfmts", "--enable", arch.qemu], f"enabling {arch.qemu} in binfmt_misc")
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        raise BoardError(f"{arch.qemu} is not registered with binfmt_misc: install qemu-user-static and binfmt-support")


def _install_board_side(root: Path) -> None:
    package = Path(__file__).resolve().parents[1]
    site = root / VENV.lstrip("/") / "lib" / f"python{PYTHON}" / "site-packages" / "tvmbits"
    if site.exists():
        shutil.rmtree(site)
    site.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__")
    for name in BOARD_FILES:
        source = package / name
        if source.is_dir():
            shutil.copytree(source, site / name, ignore=ignore)
        else:
            shutil.copy2(source, site / name)


def _step(cmd: list[str], build_log, log_path: Path, log, started: float) -> None:
    """Run one build step, its output to the build log; show the first line of each of
    debootstrap's phases (Retrieving, Extracting, Unpacking, Configuring...) as progress."""
    build_log.write(f"$ {' '.join(cmd)}\n")
    build_log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    phases = set()
    last = ""
    for line in proc.stdout:
        build_log.write(line)
        last = line.strip() or last
        match = re.match(r"I: (\w+)", line)
        if match and match.group(1) not in phases:
            phases.add(match.group(1))
            log(f"      {time.monotonic() - started:4.0f} s  {line.strip()[3:]}")
    if proc.wait() != 0:
        build_log.flush()
        raise BoardError(f"building the board failed at `{cmd[0]}` ({last}); see {log_path}")


def run_quiet(cmd: list[str], what: str, error: type = BoardError) -> None:
    """Run `cmd` with its output captured; a failure is one `error` saying `what` failed and
    the command's last line of output."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise error(f"{what} failed: {lines[-1] if lines else f'exit code {done.returncode}'}")


def _remove_tree(path: Path) -> None:
    """Remove an interrupted build, after unmounting anything debootstrap left mounted in it."""
    inside = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(inside)), key=len, reverse=True):
        run_quiet(["umount", "--lazy", mount], f"unmounting {mount} of an interrupted board build")
    shutil.rmtree(path)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _die_with_parent() -> None:
    """In the board's process: get SIGTERM when the process that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
