"""The binarized ResNet-18 example, compiled for this machine by tvmbits installed as a user
installs it (a regular, non-editable install in a fresh virtual environment), applies the shipped
tuning log of this machine's architecture
and gives ONNX Runtime's numbers: exactly up to the float classifier (every activation there is
dyadic and exact in float32), within float32 round-off after it."""

import json
import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from compiled import run_local

REPO = Path(__file__).parents[1]
sys.path.insert(0, str(REPO / "examples"))
from bireal_resnet18 import build_model, make_input  # noqa: E402

LAST_RESIDUAL = "stage4.block2.unit2.residual"


def regular_install(folder: Path) -> Path:
    """A fresh virtual environment with tvmbits installed from this checkout, non-editable; its
    dependencies are the test environment's (a path file), so nothing is downloaded."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = Path(subprocess.run(
        [str(folder / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(folder / "bin" / "python"), "install", "-q", "--no-deps",
         "--no-build-isolation", str(REPO)],
        check=True, capture_output=True,
    )
    return site


def test_example_from_a_regular_install_applies_the_shipped_log_and_equals_onnxruntime(tmp_path):
    site = regular_install(tmp_path / "venv")
    model = build_model(input_size=224)
    model.graph.output.append(helper.make_tensor_value_info(LAST_RESIDUAL, TensorProto.FLOAT, [1, 512, 7, 7]))
    path = tmp_path / "bireal.onnx"
    onnx.save(model, path)
    tvmbits = str(tmp_path / "venv" / "bin" / "tvmbits")
    fresh = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # a user who never tuned
    subprocess.run([tvmbits, "compile", str(path), "-o", str(tmp_path / "bireal.tar")],  # for this machine
                   check=True, cwd=tmp_path, capture_output=True, env=fresh)
    meta = json.loads(subprocess.run([tvmbits, "inspect", str(tmp_path / "bireal.tar")], check=True,
                                     capture_output=True, text=True).stdout)
    shipped = site / "tvmbits" / "tuning_logs" / platform.machine()
    if shipped.is_dir():  # a log ships for x86-64 machines
        assert Path(meta["tuning_log"]) == shipped and meta["tuned_kernels"] > 0
    kernels = [layer["kernel"] for layer in meta["layers"]]
    assert kernels.count("bitserial") == 16 and kernels.count("float") == 5
    x = make_input(224, seed=1)
    expected_logits, expected_residual = ort.InferenceSession(str(path)).run(None, {"input": x})
    (logits, residual), _ = run_local(tmp_path / "bireal.tar", x)
    np.testing.assert_array_equal(residual, expected_residual)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert logits.argmax() == expected_logits.argmax()
