"""The CUDA design space `tvmbits tune` searches (`schedules/cuda.py` `design_spaces`): distinct
thread-block tiles within the shared memory a block gets, whose traces replay on the task's
function as MetaSchedule replays them, whose kernels are exact (emulated, `test_cuda_emulated`),
and tuning logs kept per GPU architecture."""

import shutil

import pytest
import tvm
import tvm_ffi
from conv_cases import BIPOLAR, Conv
from tvm import te

from tvmbits.ops.bitpack import bitpack
from tvmbits.ops.bitserial_gemm import bitserial_conv2d_gemm
from tvmbits.schedules.cuda import DEFAULT_TILE, SHARED_BYTES, TUNED_TILES, Tile, design_spaces
from tvmbits.targets import profile

pytestmark = pytest.mark.kernel

TARGET = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host="llvm")
CONV = Conv(2, (14, 14), 128, 128, (3, 3), (1, 1), (1, 1, 1, 1))


def conv_gemm() -> tvm.tirx.PrimFunc:
    codes = te.placeholder((CONV.batch, *CONV.size, CONV.channels), "int32", "codes")
    weight = te.placeholder((CONV.out_channels, *CONV.kernel, 1, CONV.channels // 32), "uint32", "weight")
    offset = te.placeholder((CONV.batch, *CONV.size), "int32", "offset")
    table = te.placeholder((3, 3, CONV.out_channels), "int32", "weight_term")
    out = bitserial_conv2d_gemm(bitpack(codes, 1), weight, CONV.channels, BIPOLAR, BIPOLAR, CONV.strides,
                                CONV.padding, offset=offset, weight_term=table)
    return te.create_prim_func([codes, weight, offset, table, out])


def test_tuned_tiles_fit_shared_memory_and_include_the_default():
    fitting = [tile for tile in TUNED_TILES if tile.shared_bytes() <= SHARED_BYTES]
    assert DEFAULT_TILE in fitting and len(fitting) >= 24


def test_design_spaces_are_distinct_and_replay_on_the_task():
    func = conv_gemm()
    spaces = design_spaces(func, TARGET)
    assert len(spaces) >= 12
    assert len({tvm_ffi.structural_hash(sch.mod) for sch in spaces}) == len(spaces)
    for sch in spaces[:4]:
        replayed = tvm.s_tir.Schedule(func)
        sch.trace.apply_to_schedule(replayed, remove_postproc=False)
        tvm.ir.assert_structural_equal(replayed.mod, sch.mod)
        executable = tvm.compile(sch.mod, target=TARGET)
        source = next(m for m in executable.mod.imports if m.kind == "cuda").inspect_source()
        assert "and.popc" in source


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ (C++20) compiles the emulated kernels")
@pytest.mark.parametrize("tile", [pytest.param(Tile(1, 1, 2, 2, 2), marks=pytest.mark.slow), Tile(4, 2, 4, 2, 8)], ids=str)
def test_tuned_tiles_are_exact(tile, tmp_path):
    from test_cuda_emulated import check

    check("bitserial", CONV, BIPOLAR, BIPOLAR, tmp_path, arch="sm_80", tile=tile)


def test_cuda_tuning_logs_are_kept_per_architecture():
    assert profile.load("cuda", gpu_arch="sm_80").log_name == "cuda-sm_80"
    assert profile.load("cuda", gpu_arch="sm_90").log_name == "cuda-sm_90"
    assert profile.load("x86_64").log_name == "x86_64"


@pytest.mark.skipif(tvm.cuda(0).exist, reason="this machine has a GPU to tune on")
def test_tuning_for_cuda_without_a_gpu_is_a_user_error(tmp_path):
    import onnx
    from onnx_models import tiny_bnn

    from tvmbits.cli import main

    onnx.save(tiny_bnn(), tmp_path / "bnn.onnx")
    assert main(["tune", str(tmp_path / "bnn.onnx"), "--target", "cuda", "--trials", "2", "--log", str(tmp_path / "log")]) == 2
