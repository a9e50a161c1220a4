"""Every user mistake is one error line on stderr (after any progress lines) and exit code 2,
no traceback."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import helper

from onnx_models import make_model
from tvmbits.cli import main


def _fails(capsys, argv, fragment):
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("tvmbits: error: ")]
    assert errors == lines[-1:] and not any("Traceback" in line for line in lines), lines
    assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def bnn_file(tiny):
    return tiny.model


@pytest.fixture
def bnn_tar(tiny):
    return tiny.artifact


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


def test_host_build_without_a_compiler_is_one_line(capsys, bnn_file, tmp_path, monkeypatch):
    """A machine with no C++ compiler (a bare AArch64 server before scripts/setup.sh): the host
    build says what to install instead of failing inside TVM, and leaves no artifact."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, gcc, clang++, c++ or cc on it
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    out = tmp_path / "bnn.tar"
    _fails(capsys, ["compile", str(bnn_file), "--target", "host", "-o", str(out)],
           "linking for target host needs this machine's C++ compiler")
    assert not out.exists()


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


# issue 12: nothing lost, nothing half-written, one line for every bad input


def _refused_before_work(capsys, argv, fragment):
    """Refused with one line, before the model is imported (checked before the compile starts)."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvmbits: error: ") and fragment in lines[0], lines
    return lines[0]


def test_compile_never_overwrites_the_model(capsys, tmp_path, bnn_file):
    model = tmp_path / "bnn.onnx"
    model.write_bytes(bnn_file.read_bytes())
    before = model.read_bytes()
    link = tmp_path / "link.tar"
    link.symlink_to(model)
    for output in (model, link, tmp_path / "." / "bnn.onnx"):
        _refused_before_work(capsys, ["compile", str(model), "-o", str(output)], "is the model")
    notes = tmp_path / "notes.txt"
    notes.write_text("not an artifact")
    _refused_before_work(capsys, ["compile", str(model), "-o", str(notes)], "give --force")
    _refused_before_work(capsys, ["compile", str(model), "-o", str(model), "--force"], "is the model")
    assert model.read_bytes() == before and notes.read_text() == "not an artifact"


def test_compile_output_folder_checked_first_and_nothing_left(capsys, tmp_path, bnn_file):
    _refused_before_work(capsys, ["compile", str(bnn_file), "-o", str(tmp_path / "absent" / "m.tar")], "does not exist")
    folder = tmp_path / "existing"
    folder.mkdir()
    _refused_before_work(capsys, ["compile", str(bnn_file), "-o", str(folder)], "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"] and not any(folder.iterdir())


def test_target_with_unknown_kind_is_refused_before_the_compile(capsys, tmp_path, bnn_file):
    toml = tmp_path / "board.toml"
    toml.write_text('name = "board"\narch = "x86_64"\n[target]\nkind = "pdp11"\n')
    _refused_before_work(
        capsys, ["compile", str(bnn_file), "--target", str(toml), "-o", str(tmp_path / "m.tar")], "pdp11"
    )


@pytest.mark.parametrize("shape", [[1, 0, 8, 8], [0, 3, 8, 8]], ids=["zero channels", "zero batch"])
def test_zero_size_input_is_one_line(capsys, tmp_path, shape):
    node = helper.make_node("Relu", ["input"], ["y"])
    path = tmp_path / "zero.onnx"
    onnx.save(make_model([node], [("input", shape)], [("y", shape)], {}), path)
    _fails(capsys, ["compile", str(path), "-o", str(tmp_path / "m.tar")], "every dimension must be at least 1")
    assert not (tmp_path / "m.tar").exists()


def test_input_shape_overflowing_int32_is_one_line(capsys, tmp_path, bnn_file):
    out = str(tmp_path / "m.tar")
    for dims in ("1,3,99999999999,9", "1,3,65536,65536"):
        _fails(capsys, ["compile", str(bnn_file), "-o", out, "--input-shape", f"input={dims}"], "int32")


def _external_model(folder, location):
    folder.mkdir(exist_ok=True)
    w = np.ones((4, 3, 3, 3), np.float32)
    model = make_model([helper.make_node("Conv", ["input", "w"], ["y"])], [("input", [1, 3, 8, 8])],
                       [("y", [1, 4, 6, 6])], {"w": w})
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    saved = onnx.load(folder / "m.onnx", load_external_data=False)
    for entry in saved.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(saved, folder / "m.onnx")
    return folder / "m.onnx"


@pytest.mark.parametrize(
    "location, message",
    [("gone.data", "does not exist"), ("../m.data", "outside the model's folder"),
     ("/etc/passwd", "outside the model's folder")],
    ids=["missing", "parent folder", "absolute"],
)
def test_external_data_missing_or_outside_is_one_line(capsys, tmp_path, location, message):
    model = _external_model(tmp_path / "model", location)
    _fails(capsys, ["compile", str(model), "-o", str(tmp_path / "m.tar")], message)


def test_external_data_inside_the_folder_is_read(tmp_path):
    from tvmbits.frontend.onnx import load

    model = load(_external_model(tmp_path / "model", "m.data"))
    assert len(model.graph.initializer[0].raw_data) == 4 * 3 * 3 * 3 * 4


def test_importer_failure_is_one_line_and_verbose_shows_tvm(capfd, tmp_path):
    w = np.ones((4, 5, 3, 3), np.float32)  # 5 input channels for a 3-channel input
    model = make_model([helper.make_node("Conv", ["input", "w"], ["y"], name="c")], [("input", [1, 3, 8, 8])],
                       [("y", [1, 4, 6, 6])], {"w": w})
    path = tmp_path / "mismatch.onnx"
    onnx.save(model, path)
    assert main(["compile", str(path), "-o", str(tmp_path / "m.tar")]) == 2
    captured = capfd.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert lines == ["importing " + str(path), lines[-1]] and "TVM's ONNX importer failed" in lines[-1], lines
    assert main(["compile", str(path), "-o", str(tmp_path / "m.tar"), "--verbose"]) == 2
    verbose = capfd.readouterr().err
    assert "Error converting operator Conv" in verbose and verbose.strip().splitlines()[-1] == lines[-1]


def test_opset_newer_than_onnx_knows_is_said(capsys, tmp_path):
    from tvmbits.frontend.onnx import load

    model = make_model([helper.make_node("Relu", ["input"], ["y"])], [("input", [1, 4])], [("y", [1, 4])], {})
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    path = tmp_path / "new.onnx"
    onnx.save(model, path)
    said = []
    load(path, said.append)
    assert len(said) == 1 and f"opset {onnx.defs.onnx_opset_version() + 5} is newer" in said[0]


def test_run_output_naming_a_file_is_refused_before_running(capsys, tmp_path, bnn_tar):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((1, 3, 9, 9), np.float32))
    existing = tmp_path / "out.txt"
    existing.write_text("keep")
    _fails(capsys, ["run", str(bnn_tar), "--input", str(x), "--output", str(existing)], "is a file")
    _fails(capsys, ["run", str(bnn_tar), "--input", str(x), "--output", str(existing / "sub")], "is a file")
    assert existing.read_text() == "keep"


def test_run_input_that_is_not_npy(capsys, tmp_path, bnn_tar):
    npz = tmp_path / "x.npz"
    np.savez(npz, input=np.ones((1, 3, 9, 9), np.float32))
    _fails(capsys, ["run", str(bnn_tar), "--input", f"input={npz}"], "not a .npy file")
    text = tmp_path / "x.txt"
    text.write_text("1 2 3\n")
    _fails(capsys, ["run", str(bnn_tar), "--input", f"input={text}"], "not a .npy file")
    objects = tmp_path / "o.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _fails(capsys, ["run", str(bnn_tar), "--input", f"input={objects}"], "cannot read")


def test_run_input_given_twice(capsys, tmp_path, bnn_tar):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((1, 3, 9, 9), np.float32))
    _fails(capsys, ["run", str(bnn_tar), "--input", f"input={x}", "--input", f"input={x}"], "given twice")


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "0"])
def test_run_timeout_must_be_finite_and_positive(capsys, tmp_path, bnn_tar, timeout):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((1, 3, 9, 9), np.float32))
    _fails(capsys, ["run", str(bnn_tar), "--input", str(x), "--timeout", timeout], "positive, finite")


def test_nonfinite_inputs_to_a_lowbit_model_warn_once(capsys, tmp_path, bnn_tar):
    x = np.ones((1, 3, 9, 9), np.float32)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    path = tmp_path / "x.npy"
    np.save(path, x)
    assert main(["run", str(bnn_tar), "--input", str(path), "--repeat", "0"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "NaN becomes -1" in warnings[0], warnings


def test_long_local_timing_prints_progress(capsys, tmp_path, bnn_tar, monkeypatch):
    from tvmbits import model as loaded_model

    monkeypatch.setattr(loaded_model, "PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(loaded_model, "PROGRESS_EVERY_S", 0.0)
    path = tmp_path / "x.npy"
    np.save(path, np.ones((1, 3, 9, 9), np.float32))
    assert main(["run", str(bnn_tar), "--input", str(path), "--repeat", "3"]) == 0
    err = capsys.readouterr().err
    assert "timing 3 runs" in err and "timed 3/3 runs" in err, err


def test_missing_tuning_log_is_refused_before_the_compile(capsys, tmp_path, bnn_file):
    _refused_before_work(
        capsys, ["compile", str(bnn_file), "-o", str(tmp_path / "m.tar"), "--tuning-log", str(tmp_path / "absent")],
        "no such tuning log folder",
    )


def test_output_files_stay_inside_the_output_folder(tmp_path):
    from tvmbits.deploy import write_outputs

    one = np.ones(2, np.float32)
    paths = write_outputs({"/conv1/Add_output_0": one, "../up": one, "_conv1_Add_output_0": one}, tmp_path / "out")
    assert all(Path(p).parent == tmp_path / "out" for p in paths.values()) and len(set(paths.values())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ctrl_c_inside_a_tvm_callback_is_interrupted_not_an_error(monkeypatch, capsys, tmp_path, sigint_handler):
    """A Ctrl-C that lands in a Python pass TVM's C++ runs comes back as a RuntimeError; the CLI
    still says interrupted (exit 130), with no traceback."""

    @tvm.transform.module_pass(opt_level=0)
    def ctrl_c(mod, _ctx):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises here
        return mod

    def compile_(args):
        ctrl_c(tvm.IRModule())
        return 0

    monkeypatch.setattr("tvmbits.cli._compile", compile_)
    sigint_handler()
    assert main(["compile", str(tmp_path / "model.onnx")]) == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert capsys.readouterr().err.strip().splitlines() == ["tvmbits: interrupted"]
