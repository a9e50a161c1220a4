"""End to end on an emulated arm64 board (`tvmbits board emulate arm64`: Debian arm64 under
qemu-user, TVM from the aarch64 wheels): models compiled for arm64 and run with `tvmbits run --rpc`
give the same bytes as the x86_64 build of the same model run here, with timings and a profile.
So do the board profiles' builds on their own emulated boards (`board emulate rpi5` runs on a
Cortex-A76 CPU model, `rpi4` on a Cortex-A72, `rpi3` on a Cortex-A53).

The board's root file system is built on first use (about 4 min) and cached (see
`tvmbits.board.emulate`); later runs start the board in about 20 s.
"""

import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from boards import Process, free_port, one_error_line, processes_with, tvmbits
from onnx_models import dyadic_input, float_cnn
from tvmbits.cli import main

_spec = importlib.util.spec_from_file_location(
    "bireal_resnet18", Path(__file__).parents[1] / "examples" / "bireal_resnet18.py"
)
bireal_resnet18 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bireal_resnet18)

BUILD_AND_BOOT_S = 1200  # a fresh root file system takes about 4 min to build, a cached one 20 s to boot


class EmulatedBoard:
    """`tvmbits board emulate PROFILE` running in its own process group; `address()` waits until it
    serves, so the tests can compile while the board builds and boots."""

    def __init__(self, folder, profile="arm64"):
        self.port = free_port()
        self.process = Process([sys.executable, "-m", "tvmbits", "board", "emulate", profile, "--port", str(self.port)],
                               folder / f"{profile}-board.log")

    def address(self) -> str:
        self.process.wait_for("tvmbits: serving TVM RPC on", timeout=BUILD_AND_BOOT_S)
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def arm64_board(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("an emulated board needs root (debootstrap, chroot, mount)")
    board = EmulatedBoard(tmp_path_factory.mktemp("arm64-board"))
    yield board
    # the board (another process group) goes when `board emulate` gets SIGTERM; allow it the time
    board.process.stop(grace=20)
    assert not processes_with(f"board serve --host 127.0.0.1 --port {board.port}"), "the board outlived emulate"


@pytest.fixture(scope="module")
def models(arm64_board, tmp_path_factory):
    """name → (arm64 artifact, this machine's artifact (`host`), input file): the binarized
    ResNet-18 example at 32×32, and float_cnn quantized after training to 2-bit weights and
    activations."""
    folder = tmp_path_factory.mktemp("arm64-models")
    onnx.save(bireal_resnet18.build_model(input_size=32, num_classes=10), folder / "bireal.onnx")
    np.save(folder / "bireal.npy", bireal_resnet18.make_input(32))
    onnx.save(float_cnn(), folder / "w2a2.onnx")
    np.save(folder / "w2a2.npy", dyadic_input((1, 3, 12, 12), seed=1))
    flags = {"bireal": [], "w2a2": ["--wbits", "2", "--abits", "2"]}
    built = {}
    for name, extra in flags.items():
        for target in ("arm64", "host"):
            out = folder / f"{name}-{target}.tar"
            assert main(["compile", str(folder / f"{name}.onnx"), "--target", target, "-o", str(out), *extra]) == 0
        built[name] = (folder / f"{name}-arm64.tar", folder / f"{name}-host.tar", folder / f"{name}.npy")
    return built


@pytest.mark.parametrize("name", ["bireal", "w2a2"])
def test_board_output_equals_x86_64_output(models, arm64_board, name, tmp_path):
    arm64, x86_64, x = models[name]
    here, _ = tvmbits("run", str(x86_64), "--input", f"input={x}", "--output", str(tmp_path / "x86_64"),
                      "--repeat", "0", "--json")
    assert here.returncode == 0, here.stderr
    board, _ = tvmbits("run", str(arm64), "--input", f"input={x}", "--rpc", arm64_board.address(),
                       "--output", str(tmp_path / "arm64"), "--repeat", "3", "--profile", "--json")
    assert board.returncode == 0, board.stderr + arm64_board.process.text()[-3000:]
    expected = np.load(json.loads(here.stdout)["outputs"]["logits"])
    report = json.loads(board.stdout)
    got = np.load(report["outputs"]["logits"])
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes(), np.abs(got - expected).max()
    assert report["timing_ms"]["repeat"] == 3 and report["timing_ms"]["median"] > 0
    kernels = [row["name"] for row in report["profile"]]
    assert any("bitserial" in kernel for kernel in kernels), kernels
    assert sum(row["share"] for row in report["profile"]) == pytest.approx(1.0)


def test_board_prints_timings_and_profile_table(models, arm64_board):
    arm64, _, x = models["w2a2"]
    done, _ = tvmbits("run", str(arm64), "--input", f"input={x}", "--rpc", arm64_board.address(),
                      "--repeat", "2", "--profile")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "logits: float32[1, 10]"
    assert lines[1].startswith("latency: mean ") and lines[1].endswith(" ms over 2 runs")
    assert lines[2].split() == ["kernel", "calls", "ms/run", "share"]


def test_x86_64_artifact_is_refused_before_upload(models, arm64_board, tmp_path):
    _, x86_64, x = models["bireal"]
    profile = "host"
    if platform.machine() != "x86_64":  # an AArch64 machine: cross-build for x86-64
        x86_64, profile = compile_for("x86_64", "bireal", x86_64.parent), "x86_64"
    address = arm64_board.address()
    uploads = arm64_board.process.count("load_module")
    done, _ = tvmbits("run", str(x86_64), "--input", f"input={x}", "--rpc", address)
    one_error_line(done, f"artifact is built for {profile} (x86_64) but board {address} is aarch64")
    assert arm64_board.process.count("load_module") == uploads


def compile_for(profile, name, folder):
    flags = {"bireal": [], "w2a2": ["--wbits", "2", "--abits", "2"]}[name]
    out = folder / f"{name}-{profile}.tar"
    assert main(["compile", str(folder / f"{name}.onnx"), "--target", profile, "-o", str(out), *flags]) == 0
    return out


# all with -m slow: the default run has the arm64 board's tests above, and test_arm_subbyte runs the
# rpi5 and rpi4 kernels on their CPU models. In two of four fresh-clone CI runs, rpi5-w2a2's first
# session got no answer after the board accepted it ("start serving at", then nothing: the client
# gave up after 30 s in one run, after 120 s in the other), which no rerun on a built board
# reproduced (three runs of the board tests beside other tests, and twenty sessions of a fresh rpi5
# board with both cores busy)
@pytest.mark.slow
@pytest.mark.parametrize("profile, names", [
    ("rpi5", ["w2a2"]),
    ("rpi5", ["bireal"]),
    ("rpi4", ["bireal", "w2a2"]),
    ("rpi3", ["bireal", "w2a2"]),
], ids=["rpi5-w2a2", "rpi5-bireal", "rpi4", "rpi3"])
def test_profile_board_output_equals_x86_64_output(models, profile, names, tmp_path):
    board = EmulatedBoard(tmp_path, profile)
    try:
        assert f"on a {emulate_cpu(profile)}" in (board.address() and board.process.text())
        for name in names:
            _, x86_64, x = models[name]
            built = compile_for(profile, name, x86_64.parent)
            here, _ = tvmbits("run", str(x86_64), "--input", f"input={x}", "--output", str(tmp_path / f"{name}-here"),
                              "--repeat", "0", "--json")
            there, _ = tvmbits("run", str(built), "--input", f"input={x}", "--rpc", board.address(),
                               "--output", str(tmp_path / f"{name}-{profile}"), "--repeat", "0", "--json")
            assert there.returncode == 0, there.stderr + board.process.text()[-3000:]
            expected = np.load(json.loads(here.stdout)["outputs"]["logits"])
            got = np.load(json.loads(there.stdout)["outputs"]["logits"])
            assert got.tobytes() == expected.tobytes(), (name, np.abs(got - expected).max())
    finally:
        board.process.stop(grace=20)


def emulate_cpu(profile):
    from tvmbits.board import emulate

    return emulate.qemu_cpu(profile)


def test_armv7_cannot_be_emulated_yet():
    done, _ = tvmbits("board", "emulate", "armv7", timeout=60)
    one_error_line(done, "cannot emulate armv7: PyPI has no armv7 (armhf) build of apache-tvm")
