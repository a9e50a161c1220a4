"""A CUDA artifact says what the loading machine needs, `inspect` reads it like any other, and
running it on a machine without a GPU is one line and exit code 2 (where there is a GPU, the
run itself is `test_cuda_gpu.py`'s)."""

import json

import numpy as np
import onnx
import pytest
import tvm
from onnx_models import tiny_bnn

from tvmbits.cli import main


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cuda")
    onnx.save(tiny_bnn(channels=(64, 64, 64), size=8), folder / "bnn.onnx")
    assert main(["compile", str(folder / "bnn.onnx"), "--target", "cuda", "--arch", "sm_80",
                 "-o", str(folder / "bnn.tar")]) == 0
    np.save(folder / "x.npy", np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32))
    return folder


def test_cuda_artifact_states_its_architecture_and_loader(artifact, capsys):
    capsys.readouterr()
    assert main(["inspect", str(artifact / "bnn.tar")]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["device"] == "cuda" and json.loads(meta["target"])["arch"] == "sm_80"
    assert "NVRTC" in meta["device_code"] and "sm_80" in meta["device_code"]


@pytest.mark.skipif(tvm.cuda(0).exist, reason="this machine has a GPU")
def test_running_a_cuda_artifact_without_a_gpu_is_a_user_error(artifact, capsys):
    assert main(["run", str(artifact / "bnn.tar"), "--input", f"input={artifact / 'x.npy'}"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
