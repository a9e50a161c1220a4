"""Every user mistake is one error line on stderr (after any progress lines) and exit code 2,
no traceback."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_models import make_model, tiny_bnn
from tvmbits.cli import main


def _fails(capsys, argv, fragment):
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("tvmbits: error: ")]
    assert errors == lines[-1:] and not any("Traceback" in line for line in lines), lines
    assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def bnn_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "bnn.onnx"
    onnx.save(tiny_bnn(), path)
    return path


@pytest.fixture(scope="module")
def bnn_tar(bnn_file):
    out = bnn_file.with_suffix(".tar")
    assert main(["compile", str(bnn_file), "--target", "host", "-o", str(out)]) == 0
    return out


def test_missing_model_file(capsys, tmp_path):
    _fails(capsys, ["compile", str(tmp_path / "nope.onnx")], "no such model file")


def test_not_an_onnx_file(capsys, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("this is not protobuf\n" * 10)
    _fails(capsys, ["compile", str(path)], "not an ONNX model")


def test_unsupported_op_names_op_and_node(capsys, tmp_path):
    node = helper.make_node("FancyOp", ["input"], ["logits"], name="mystery", domain="com.example")
    model = make_model([node], [("input", [1, 4])], [("logits", [1, 4])], {}, domains=["com.example"])
    path = tmp_path / "fancy.onnx"
    onnx.save(model, path)
    err = _fails(capsys, ["compile", str(path)], "FancyOp")
    assert "'mystery'" in err


def test_unknown_target(capsys, bnn_file):
    _fails(capsys, ["compile", str(bnn_file), "--target", "pdp11"], "unknown target 'pdp11'")


@pytest.mark.parametrize("bits", ["0", "9"])
def test_bad_bit_widths(capsys, bnn_file, bits):
    _fails(capsys, ["compile", str(bnn_file), "--wbits", bits], f"--wbits {bits}")
    _fails(capsys, ["compile", str(bnn_file), "--abits", bits], f"--abits {bits}")


def test_bad_flag(capsys):
    _fails(capsys, ["compile"], "the following arguments are required")
    _fails(capsys, ["run", "x.tar", "--repeat", "many"], "invalid int value")


def test_run_with_wrong_input_name_or_shape(capsys, tmp_path, bnn_tar):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((1, 3, 9, 9), np.float32))
    _fails(capsys, ["run", str(bnn_tar), "--input", f"image={x}"], "no input 'image'")
    np.save(x, np.ones((1, 3, 8, 8), np.float32))
    _fails(capsys, ["run", str(bnn_tar), "--input", f"input={x}"], "shape (1, 3, 8, 8)")
    np.save(x, np.ones((1, 3, 9, 9), np.float64))
    _fails(capsys, ["run", str(bnn_tar), "--input", f"input={x}"], "dtype float64")
    _fails(capsys, ["run", str(bnn_tar)], "missing --input for input")


def test_corrupt_artifact(capsys, tmp_path, bnn_tar):
    broken = tmp_path / "broken.tar"
    data = bytearray(bnn_tar.read_bytes())
    data[2000] ^= 0xFF  # inside lib.so
    broken.write_bytes(bytes(data))
    _fails(capsys, ["inspect", str(broken)], "checksum")
    _fails(capsys, ["run", str(broken), "--input", "x.npy"], "checksum")


def test_console_script_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tvmbits", "compile", str(tmp_path / "absent.onnx")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
