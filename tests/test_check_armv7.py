"""`tvmbits check --target armv7`: kernels built for armv7 run under qemu-arm (cortex-a7) through
the C harness and its armhf libtvm_ffi, compared with the integer reference.

The example models' low-bit layers pass and a corrupted packed weight bit fails its layer by
name; the kernel grid is the armv7 counterpart of test_bitserial_ops/test_subbyte_ops (a few
cases by default, the rest with -m slow). The harness and libtvm_ffi are built once
(scripts/setup.sh; else on first use, about 3 min) and cached in .cache/check.
"""

import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from conv_cases import BIPOLAR, CONVS, DENSES, SMALL, pair_id, pairs
from lowbit_kernels import build, inputs, pack_weight, random_codes, upstream

import tvmbits.check as check
from tvmbits.check.emulator import Emulator
from tvmbits.check.layer_program import Program
from tvmbits.cli import main
from tvmbits.compiler import CompileOptions
from tvmbits.ops import reference
from tvmbits.ops.encoding import Encoding
from tvmbits.targets.profile import load

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import bireal_resnet18  # noqa: E402

PROFILE = load("armv7")
TARGET = PROFILE.tvm_target()

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-arm") or shutil.which("qemu-arm-static")) or not shutil.which("arm-linux-gnueabihf-gcc"),
    reason="needs qemu-user(-static) and gcc-arm-linux-gnueabihf (scripts/setup.sh installs them)",
)


@pytest.fixture(scope="module")
def emulator():
    return Emulator(PROFILE, log=lambda m: print(m, file=sys.stderr))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits example (4-bit input, binarized 3x3 convs and classifier), trained one epoch."""
    import torch
    import digits_bnn

    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    net, _ = digits_bnn.train(epochs=1, seed=1)
    digits_bnn.export_qonnx(net, torch.zeros(digits_bnn.SHAPE), str(path), input_names=["input"])
    return path


def test_digits_example_layers_pass(digits, capsys):
    assert main(["check", str(digits), "--target", "armv7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "4 of 4 low-bit layers pass"
    kernels = [line.split()[1] for line in lines[:-1]]
    assert kernels == ["subbyte", "bitserial", "bitserial", "bitserial"]
    assert all("  pass  max difference 0" in line for line in lines[:-1])


def test_corrupted_weight_bit_fails_its_layer(digits, monkeypatch, capsys):
    """One bit of one layer's packed weights flipped after building: that layer, and only it, fails."""
    victim = "node_Conv_105"
    build_program = check._program

    def corrupted(plan, *args):
        program = build_program(plan, *args)
        if plan.name == victim:
            weights = [t for t in program.tensors if isinstance(t, np.ndarray) and t.dtype == np.uint32]
            weight = max(weights, key=lambda t: t.size)  # the packed weight constant
            weight.reshape(-1)[0] ^= np.uint32(1)
        return program

    plans = check._layer_plans
    monkeypatch.setattr(check, "_layer_plans", lambda *args: plans(*args)[1:3])  # the victim and the next
    monkeypatch.setattr(check, "_program", corrupted)
    assert main(["check", str(digits), "--target", "armv7"]) == 1
    out = capsys.readouterr().out.splitlines()
    failed = [line for line in out[:-1] if "FAIL" in line]
    assert len(failed) == 1 and failed[0].startswith(victim + " ")
    assert out[-1] == f"1 of 2 low-bit layers pass; failed: {victim}"


def test_bireal_example_first_layers_pass(tmp_path, monkeypatch):
    """The Bi-Real ResNet-18 example at a 32x32 input: its first stage's and first stride-2 layer."""
    onnx.save(bireal_resnet18.build_model(input_size=32, num_classes=10), tmp_path / "bireal.onnx")
    plans = check._layer_plans
    monkeypatch.setattr(check, "_layer_plans", lambda *args: plans(*args)[3:5])
    results = check.check_model(tmp_path / "bireal.onnx", CompileOptions(target="armv7"))
    assert [r.name for r in results] == ["stage1.block2.unit2.conv", "stage2.block1.unit1.conv"]
    assert all(r.passed and r.max_difference == 0 for r in results), [r.line() for r in results]


@pytest.mark.slow
@pytest.mark.parametrize("size", [32, 224])
def test_bireal_example_every_layer_passes(tmp_path, size):
    onnx.save(bireal_resnet18.build_model(input_size=size, num_classes=10), tmp_path / "bireal.onnx")
    results = check.check_model(tmp_path / "bireal.onnx", CompileOptions(target="armv7"))
    assert len(results) == 16
    assert all(r.passed and r.max_difference == 0 for r in results), [r.line() for r in results if not r.passed]


def test_unsupported_target_is_one_line(tmp_path, capsys):
    assert main(["check", str(tmp_path / "model.onnx"), "--target", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "qemu_cpu" in err[0]


# ---- the armv7 kernel grid: ops built directly, as the x86 kernel tests build them ----

def run_kernel(emulator, tmp_path, kernel, a, w, act, wgt, *conv_args) -> np.ndarray:
    module = build(kernel, a, w, act, wgt, *conv_args, target=TARGET)
    library = tmp_path / "kernel.so"
    module.export_library(str(library), fcompile=tvm.support.cc.cross_compiler(PROFILE.cross_compiler))
    if conv_args:
        out_shape = reference.conv2d_nhwc(np.zeros(a.shape, np.int64), np.zeros(w.shape, np.int64), *conv_args).shape
    else:
        out_shape = (a.shape[0], w.shape[0])
    tensors = [*inputs(kernel, a, w, act, wgt, *conv_args), (out_shape, "int32")]
    program = Program(library, tensors, [("main", list(range(len(tensors))))], 0, len(tensors) - 1)
    return emulator.run(program, tmp_path, {})


def check_conv(emulator, tmp_path, kernel, conv, act, wgt):
    rng = np.random.default_rng(zlib.crc32(f"{kernel}{conv}{pair_id((act, wgt))}".encode()))
    a = random_codes(rng, act, (conv.batch, *conv.size, conv.channels))
    w = random_codes(rng, wgt, (conv.out_channels, *conv.kernel, conv.channels))
    got = run_kernel(emulator, tmp_path, kernel, a, w, act, wgt, conv.strides, conv.padding)
    np.testing.assert_array_equal(got, reference.conv2d_nhwc(act.decode(a), wgt.decode(w), conv.strides, conv.padding))


def check_dense(emulator, tmp_path, kernel, shape, act, wgt):
    batch, features, out_features = shape
    rng = np.random.default_rng(zlib.crc32(f"{kernel}{shape}{pair_id((act, wgt))}".encode()))
    a = random_codes(rng, act, (batch, features))
    w = random_codes(rng, wgt, (out_features, features))
    got = run_kernel(emulator, tmp_path, kernel, a, w, act, wgt)
    np.testing.assert_array_equal(got, reference.dense(act.decode(a), wgt.decode(w)))


U2, S2, U3, S4, U5, S8 = (Encoding("unsigned", 2), Encoding("signed", 2), Encoding("unsigned", 3),
                          Encoding("signed", 4), Encoding("unsigned", 5), Encoding("signed", 8))
SUBBYTE = [BIPOLAR, U3, S4, U5, S8]
# (kernel, conv, activation, weight): padding, strides, odd channels, every encoding kind, both kernels
DEFAULT_CONVS = [
    ("bitserial", CONVS[1], BIPOLAR, BIPOLAR),  # 33 channels, padding 1, batch 3
    ("bitserial", CONVS[2], U2, S2),  # stride 2, asymmetric padding, 70 channels
    ("subbyte", CONVS[7], S4, BIPOLAR),  # strides 1x3, 31 channels
    ("subbyte", CONVS[4], U3, S8),  # 7x1 kernel, SAME padding
    ("bitserial", CONVS[3], S2, U2),  # 5x5 kernel, stride 3, padding 2
    ("bitserial", CONVS[5], BIPOLAR, S2),  # SAME padding, stride 2, 64 channels (two words)
    ("bitserial", CONVS[0], Encoding("unsigned", 1), BIPOLAR),  # 1x1, one channel
    ("subbyte", CONVS[6], S8, U5),  # 1x1 stride 2, 100 channels
]
DEFAULT_DENSES = [("bitserial", DENSES[1], S2, BIPOLAR), ("subbyte", DENSES[2], U5, S4)]

SLOW_CONVS = [("bitserial", conv, *pair) for conv in CONVS for pair in pairs(SMALL)] + [
    ("subbyte", conv, *pair) for conv in CONVS[1:5] for pair in pairs(SUBBYTE)
]
SLOW_CONVS = [case for case in SLOW_CONVS if case not in DEFAULT_CONVS]
SLOW_DENSES = [(k, shape, *pair) for shape in DENSES for k, encs in (("bitserial", SMALL), ("subbyte", SUBBYTE))
               for pair in pairs(encs)]
SLOW_DENSES = [case for case in SLOW_DENSES if case not in DEFAULT_DENSES]


def case_id(case):
    kernel, geometry, act, wgt = case
    return f"{kernel}-{geometry}-{pair_id((act, wgt))}"


@pytest.mark.parametrize("case", DEFAULT_CONVS, ids=case_id)
def test_conv2d_armv7(emulator, tmp_path, case):
    check_conv(emulator, tmp_path, *case)


@pytest.mark.parametrize("case", DEFAULT_DENSES, ids=case_id)
def test_dense_armv7(emulator, tmp_path, case):
    check_dense(emulator, tmp_path, *case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CONVS, ids=case_id)
def test_conv2d_armv7_grid(emulator, tmp_path, case):
    check_conv(emulator, tmp_path, *case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_DENSES, ids=case_id)
def test_dense_armv7_grid(emulator, tmp_path, case):
    check_dense(emulator, tmp_path, *case)


def test_kernel_error_comes_back_through_libtvm_ffi(emulator, tmp_path):
    """A kernel given a wrong output shape raises through TVMFFIErrorSetRaisedFromCStrParts in
    the armhf libtvm_ffi; the harness reports tvm-ffi's message."""
    a = np.zeros((1, 4, 4, 8), np.int64)
    w = np.zeros((2, 1, 1, 8), np.int64)
    module = build("bitserial", a, w, BIPOLAR, BIPOLAR, (1, 1), (0, 0, 0, 0), target=TARGET)
    module.export_library(str(tmp_path / "k.so"), fcompile=tvm.support.cc.cross_compiler(PROFILE.cross_compiler))
    program = Program(tmp_path / "k.so", [upstream(BIPOLAR, a), pack_weight("bitserial", w, BIPOLAR),
                                           ((1, 4, 4, 3), "int32")], [("main", [0, 1, 2])], 0, 2)
    with pytest.raises(RuntimeError, match=r"harness: main: ValueError: Invalid .*shape\[3\].*expected 2"):
        emulator.run(program, tmp_path, {})


def test_missing_model_is_one_line(tmp_path, capsys):
    assert main(["check", str(tmp_path / "none.onnx"), "--target", "armv7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.onnx" in err[0]
