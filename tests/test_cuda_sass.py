"""CUDA builds of the example models, read as SASS without a GPU: every bit-serial layer's kernel
multiplies on the 1-bit tensor cores (BMMA, `mma ... .b1 ... .and.popc`) and every sub-byte
layer's kernel on the integer tensor cores (IMMA) or with DP4A, on sm_80 and sm_90.

The device code comes from the build (`cuda_sass.cuda_source`), compiled here with nvcc and
disassembled with nvdisasm; the test is skipped, saying which, when either is missing.
Kernels are matched to layers through their PrimFuncs: LowerLowBit names every bit-serial
layer's kernel function `bitserial_<op>` and every sub-byte one `subbyte_<op>` (FuseOps adds a
`fused_` prefix and its epilogue ops; identical layers share one function), and TVM names the
kernels of function F `F_kernel`, `F_kernel_1`, ...
"""

import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from cuda_sass import cuda_source, kernels_by_function, nvdisasm, sass

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

pytestmark = pytest.mark.e2e

BITSERIAL = re.compile(r"bitserial_(conv2d|dense)")
SUBBYTE = re.compile(r"subbyte_(conv2d|dense)")
INTEGER_MMA = re.compile(r"\b(IMMA|IDP4A)\b")


@pytest.fixture(autouse=True)
def tools():
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not installed (the CUDA toolkit; it compiles the device code here)")
    if nvdisasm() is None:
        pytest.skip("nvdisasm is not installed (pip install nvidia-cuda-nvdisasm)")


def check_tensor_cores(model, arch: str, folder: Path) -> dict:
    """Compile `model` for `arch`, assert the MMA of every low-bit layer's kernel; the metadata."""
    source, meta = cuda_source(model, arch)
    assert f'"arch":"{arch}"' in meta["target"].replace(" ", "")
    functions = kernels_by_function(sass(source, arch, folder))
    bitserial = {name: kernels for name, kernels in functions.items() if BITSERIAL.search(name)}
    subbyte = {name: kernels for name, kernels in functions.items() if SUBBYTE.search(name)}
    kinds = {layer["kernel"] for layer in meta["layers"]}
    assert bool(bitserial) == ("bitserial" in kinds) and bool(subbyte) == ("subbyte" in kinds), sorted(functions)
    for name, kernels in bitserial.items():
        assert any(re.search(r"\bBMMA\.88128\.AND\.POPC\b", body) for body in kernels.values()), \
            f"{name}: no 1-bit MMA in {sorted(kernels)}"
    for name, kernels in subbyte.items():
        assert any(INTEGER_MMA.search(body) for body in kernels.values()), f"{name}: no IMMA/DP4A in {sorted(kernels)}"
    return meta


@pytest.mark.parametrize("arch", [pytest.param("sm_80", marks=pytest.mark.slow), "sm_90"])
def test_binarized_resnet18_uses_1bit_tensor_cores(tmp_path, arch):
    from bireal_resnet18 import build_model

    meta = check_tensor_cores(build_model(input_size=32, num_classes=10), arch, tmp_path)
    assert sum(layer["kernel"] == "bitserial" for layer in meta["layers"]) == 16


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    import digits_bnn

    net, _ = digits_bnn.train(epochs=1, seed=1)  # the weights do not matter here, only the layers
    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    digits_bnn.export_qonnx(net, torch.zeros(digits_bnn.SHAPE), str(path), input_names=["input"])
    return path


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_digits_bnn_uses_1bit_and_integer_tensor_cores(tmp_path, digits_model, arch):
    meta = check_tensor_cores(digits_model, arch, tmp_path)
    assert [layer["kernel"] for layer in meta["layers"]] == ["subbyte", "bitserial", "bitserial", "bitserial"]
