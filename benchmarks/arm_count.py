"""Count the aarch64 instructions one inference executes, on a QEMU CPU model, without a board.

QEMU's own instruction-counting example plugin (`tests/plugin/insn.c`, inline counter) is built
at run time against `include/qemu/qemu-plugin.h` from Debian's qemu source tarball of the
installed `qemu-user` (fetched from the Debian mirror apt uses; nothing of QEMU is committed).
Debian's dynamic `qemu-aarch64` (the static build takes no `-plugin`) and the x86-64 libraries it
and the plugin need are copied into the emulated arm64 board's root file system
(`tvmbits.board.emulate`), and run there in a chroot: ONNX Runtime's aarch64 build crashes
reading the host's /sys when run through `-L` instead.

One Python process on the board loads every model, runs each once (warm-up), then per model
forks two children that run it N₁ and N₂ times and exit: the plugin prints the instructions its
process executed at exit, a child's count includes what its parent executed before the fork,
so (count(N₂) − count(N₁)) / (N₂ − N₁) is the instructions of one inference, with Python's
start-up, imports, loading and warm-up cancelled out. One thread: TVM_NUM_THREADS=1, ONNX Runtime
with one intra-op and one inter-op thread.
"""

import json
import re
import shutil
import subprocess
import tarfile
import urllib.request
import uuid
from pathlib import Path

from tvmbits.board import emulate

COUNTER_DIR = "opt/qemu-count"  # in the board's root file system
ORT_DIR = "opt/onnxruntime"  # ONNX Runtime's aarch64 wheel and its pure-Python dependencies
ORT_WHEELS = ("onnxruntime=={version}", "coloredlogs", "flatbuffers", "packaging", "protobuf", "sympy", "mpmath",
              "humanfriendly")

BOARD_SIDE = r'''
import json, os, sys
os.environ["TVM_NUM_THREADS"] = "1"
import numpy as np

spec = json.load(open(sys.argv[1]))
folder, n1, n2 = spec["folder"], spec["n1"], spec["n2"]
runners = {}
for item in spec["items"]:
    x = np.load(item["input"])
    if item["kind"] == "ort":
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(item["path"], options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        runners[item["name"]] = lambda session=session, name=name, x=x: session.run(None, {name: x})
    else:
        import tvm
        from tvm import relax
        vm = relax.VirtualMachine(tvm.runtime.load_module(item["path"]), tvm.cpu())
        args = [tvm.runtime.tensor(x), *vm["prepare"]()]  # main takes the weights prepare unpacks, once
        runners[item["name"]] = lambda vm=vm, args=args: vm["main"](*args)
    runners[item["name"]]()  # warm-up: lazy initialisation is not an inference
    print(f"loaded {item['name']}", flush=True)
for item in spec["items"]:
    for n in (n1, n2):
        pid = os.fork()
        if pid == 0:  # the plugin writes this process's count to stderr when it exits
            fd = os.open(f"{folder}/{item['name']}.{n}.count", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            run = runners[item["name"]]
            for _ in range(n):
                run()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status:
            print(f"failed {item['name']} {n}: {status}", flush=True)
    print(f"counted {item['name']}", flush=True)
'''


def qemu_version() -> str:
    """Upstream version of the installed qemu-user (`7.2+dfsg` of `1:7.2+dfsg-7+deb12u18`)."""
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "qemu-user"], capture_output=True, text=True)
    if done.returncode or not done.stdout:
        raise SystemExit("Debian's dynamic qemu-user is not installed: apt-get install --no-install-recommends qemu-user")
    return done.stdout.split(":", 1)[-1].rsplit("-", 1)[0]


def build_plugin(cache: Path, log=print) -> Path:
    """QEMU's insn.c plugin built against the installed qemu-user's plugin header (cached)."""
    version = qemu_version()
    folder = cache / "qemu-plugin" / version
    plugin = folder / "insn.so"
    if plugin.is_file():
        return plugin
    folder.mkdir(parents=True, exist_ok=True)
    tarball = folder / f"qemu_{version}.orig.tar.xz"
    if not tarball.is_file():
        url = f"{emulate.debian_mirror().rstrip('/')}/pool/main/q/qemu/qemu_{version}.orig.tar.xz"
        log(f"fetching {url}")
        with urllib.request.urlopen(url) as response, open(f"{tarball}.part", "wb") as out:
            shutil.copyfileobj(response, out)
        Path(f"{tarball}.part").rename(tarball)
    with tarfile.open(tarball) as tar:
        wanted = [m for m in tar.getmembers() if m.name.endswith(("include/qemu/qemu-plugin.h", "tests/plugin/insn.c"))]
        tar.extractall(folder, members=wanted, filter="data")
    header = next(folder.glob("*/include/qemu/qemu-plugin.h"))
    source = next(folder.glob("*/tests/plugin/insn.c"))
    glib = subprocess.run(["pkg-config", "--cflags", "--libs", "glib-2.0"], capture_output=True, text=True, check=True)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-I", str(header.parent), str(source), "-o", str(plugin),
                    *glib.stdout.split()], check=True)
    return plugin


def install_counter(root: Path, plugin: Path) -> str:
    """Copy the dynamic qemu-aarch64, the plugin and their x86-64 libraries into the board's root
    file system; returns the command prefix that runs a guest program under it there."""
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise SystemExit("Debian's dynamic qemu-user is not installed: apt-get install --no-install-recommends qemu-user")
    target = root / COUNTER_DIR
    (target / "lib").mkdir(parents=True, exist_ok=True)
    libraries = set()
    loader = None
    for binary in (qemu, plugin):
        for line in subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout.splitlines():
            match = re.search(r"(/\S+)", line.split("=>")[-1])
            if match and "ld-linux" in match.group(1):
                loader = match.group(1)
            elif match:
                libraries.add(match.group(1))
    for library in libraries:
        shutil.copy2(library, target / "lib" / Path(library).name)
    shutil.copy2(loader, target / "ld.so")
    shutil.copy2(qemu, target / "qemu-aarch64")
    shutil.copy2(plugin, target / "insn.so")
    inside = "/" + COUNTER_DIR
    return f"{inside}/ld.so --library-path {inside}/lib {inside}/qemu-aarch64"


def install_onnxruntime(root: Path, version: str, log=print) -> str:
    """ONNX Runtime `version`'s aarch64 wheel (and its pure-Python dependencies; numpy is the
    board's) installed into `ORT_DIR` of the board; returns that folder as the board sees it."""
    target = root / ORT_DIR
    marker = target / f".installed-{version}"
    if marker.is_file():
        return "/" + ORT_DIR
    wheels = root / "tmp" / f"ort-wheels-{uuid.uuid4().hex[:8]}"
    log(f"downloading ONNX Runtime {version} for aarch64")
    subprocess.run(
        ["pip", "download", "--disable-pip-version-check", "--only-binary=:all:", "--no-deps",
         "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64", "--platform", "any",
         "--python-version", emulate.PYTHON, "--implementation", "cp", "-d", str(wheels),
         *(w.format(version=version) for w in ORT_WHEELS)],
        check=True, capture_output=True,
    )
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for wheel in wheels.glob("*.whl"):  # a wheel is a zip of the site-packages tree
        shutil.unpack_archive(str(wheel), str(target), "zip")
    shutil.rmtree(wheels)
    marker.touch()
    return "/" + ORT_DIR


def count(root: Path, prefix: str, cpu: str, items: list[dict], n1: int = 1, n2: int = 3, log=print,
          ort_path: str | None = None, timeout: float = 7200) -> dict[str, float]:
    """Instructions per inference of each item (`name`, `kind` "tvm" | "ort", `path` and
    `input` as files under `root`) on the QEMU CPU model `cpu`: name → count."""
    folder = root / "tmp" / f"count-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    inside = "/" + str(folder.relative_to(root))
    try:
        spec = {"folder": inside, "n1": n1, "n2": n2, "items": items}
        (folder / "spec.json").write_text(json.dumps(spec))
        (folder / "board_side.py").write_text(BOARD_SIDE)
        env = f"PYTHONPATH={ort_path} " if ort_path else ""
        command = (f"{env}{prefix} -cpu {cpu} -plugin /{COUNTER_DIR}/insn.so,inline=on -d plugin "
                   f"{emulate.VENV}/bin/python {inside}/board_side.py {inside}/spec.json")
        done = emulate.run("arm64", command, timeout=timeout)
        if done.returncode:
            raise SystemExit(f"counting on {cpu} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        counts = {}
        for item in items:
            totals = []
            for n in (n1, n2):
                text = (folder / f"{item['name']}.{n}.count").read_text()
                match = re.search(r"insns: (\d+)", text)
                if not match:
                    raise SystemExit(f"no instruction count for {item['name']} ({n} runs): {text[-500:]}")
                totals.append(int(match.group(1)))
            counts[item["name"]] = (totals[1] - totals[0]) / (n2 - n1)
            log(f"  {cpu} {item['name']}: {counts[item['name']] / 1e6:.2f} M instructions per inference")
        return counts
    finally:
        shutil.rmtree(folder, ignore_errors=True)
