"""arm64 and armv7 libraries are ELF for their architectures, and their bit-serial kernels
use the NEON vector popcount (`cnt` on AArch64, `vcnt` on Armv7), read with the cross objdump."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnx_models import tiny_bnn
from tvmbits.artifact import open_artifact
from compiled import compile_file
from tvmbits.compiler import CompileOptions

EM_ARM, EM_AARCH64 = 40, 183
TARGETS = {
    "arm64": (EM_AARCH64, 64, "aarch64-linux-gnu-objdump", r"\bcnt\s+v\d+\.(8|16)b"),
    "armv7": (EM_ARM, 32, "arm-linux-gnueabihf-objdump", r"\bvcnt\.8\s"),
}


def elf_machine(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", "not an ELF file"
    return int.from_bytes(header[18:20], "little"), 64 if header[4] == 2 else 32


def kernel_disassembly(objdump: str, library: Path, name_fragment: str) -> dict[str, str]:
    """Disassembly of the kernels' bodies (TVM's `<name>_compute_`, not the `__tvm_ffi_` wrappers)."""
    text = subprocess.run([objdump, "-d", str(library)], capture_output=True, text=True, check=True).stdout
    functions = re.split(r"\n(?=[0-9a-f]+ <)", text)
    headers = {f.split("\n", 1)[0]: f for f in functions}
    return {h: f for h, f in headers.items() if name_fragment in h and h.endswith("_compute_>:")}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_bitserial_kernels_use_vector_popcount(tmp_path, target):
    machine, width, objdump, popcount = TARGETS[target]
    if shutil.which(objdump) is None:
        pytest.skip(f"{objdump} is not installed (scripts/setup.sh installs it)")
    onnx.save(tiny_bnn(channels=(64, 64, 64), size=8), tmp_path / "bnn.onnx")
    compile_file(tmp_path / "bnn.onnx", tmp_path / "bnn.tar", CompileOptions(target=target))
    art = open_artifact(tmp_path / "bnn.tar")
    assert art.metadata["arch"] == {"arm64": "aarch64", "armv7": "armv7l"}[target]
    assert elf_machine(art.library) == (machine, width)
    kernels = kernel_disassembly(objdump, art.library, "bitserial")
    assert len(kernels) >= 3, list(kernels)  # two convolutions and the dense layer
    for header, body in kernels.items():
        assert re.search(popcount, body), f"{header} has no vector popcount"


@pytest.mark.parametrize("target", ["arm64", "armv7"])
def test_binarized_resnet18_example_cross_compiles(tmp_path, target):
    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    from bireal_resnet18 import build_model

    onnx.save(build_model(input_size=64, num_classes=10), tmp_path / "bireal.onnx")
    meta = compile_file(tmp_path / "bireal.onnx", tmp_path / "bireal.tar", CompileOptions(target=target))
    assert sum(layer["kernel"] == "bitserial" for layer in meta["layers"]) == 16
    machine, width, *_ = TARGETS[target]
    assert elf_machine(open_artifact(tmp_path / "bireal.tar").library) == (machine, width)
