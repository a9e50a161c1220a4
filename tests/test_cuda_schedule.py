"""The CUDA schedules (`schedules/cuda.py`) pick the tensor-core MMA by architecture, read from the
CUDA C source TVM generates (no nvcc, no GPU): the 1-bit MMA with AND (`.and.popc`) from sm_80,
the u8 × s8 / u8 × u8 MMA from sm_75, and CUDA cores (`__popc`, byte products) below that."""

import numpy as np
import pytest
import tvm
from conv_cases import BIPOLAR
from tvm import te
from tvm.s_tir import dlight

from tvmbits.ops.encoding import Encoding
from tvmbits.ops.bitserial_gemm import bitserial_conv2d_gemm, bitserial_dense_gemm
from tvmbits.ops.subbyte import block_weight, subbyte_pack
from tvmbits.ops.subbyte_gemm import subbyte_conv2d_gemm
from tvmbits.schedules import default_rules
from tvmbits.schedules.cuda import LowBitCUDA, cuda_arch
from tvmbits.targets import profile

pytestmark = pytest.mark.unit

B1_MMA = "mma.sync.aligned.m8n8k128.row.col.s32.b1.b1.s32.and.popc"
U8S8_MMA = "mma.sync.aligned.m8n8k16.row.col.s32.u8.s8.s32"


def cuda_source(func: tvm.tirx.PrimFunc, arch: str) -> str:
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host="llvm")
    mod = tvm.IRModule({"main": func})
    with target:
        mod = dlight.ApplyDefaultSchedule(*default_rules(target))(mod)
    executable = tvm.compile(mod, target=target)
    (cuda,) = [m for m in executable.mod.imports if m.kind == "cuda"]
    return cuda.inspect_source()


def bipolar_conv(batch=1, size=14, channels=64, out_channels=64) -> tvm.tirx.PrimFunc:
    data = te.placeholder((batch, size, size, 1, channels // 32), "uint32", "data")
    weight = te.placeholder((out_channels, 3, 3, 1, channels // 32), "uint32", "weight")
    out = bitserial_conv2d_gemm(data, weight, channels, BIPOLAR, BIPOLAR, (1, 1), (1, 1, 1, 1))
    return te.create_prim_func([data, weight, out])


def two_bit_dense() -> tvm.tirx.PrimFunc:
    act, wgt = Encoding("unsigned", 2), Encoding("signed", 2)
    data = te.placeholder((3, 2, 4), "uint32", "data")
    weight = te.placeholder((10, 2, 4), "uint32", "weight")
    return te.create_prim_func([data, weight, bitserial_dense_gemm(data, weight, 100, act, wgt)])


def subbyte_conv() -> tvm.tirx.PrimFunc:
    act, wgt = Encoding("unsigned", 4), Encoding("signed", 4)
    codes = te.placeholder((1, 8, 8, 32), "int32", "codes")
    blocked = block_weight(np.zeros((48, 3, 3, 32), np.int64), wgt)
    weight = te.placeholder(blocked.shape, blocked.dtype.name, "weight")
    out = subbyte_conv2d_gemm(subbyte_pack(codes, act), weight, 32, 48, act, wgt, (1, 1), (1, 1, 1, 1))
    return te.create_prim_func([codes, weight, out])


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_bit_serial_layers_use_the_1bit_mma_with_and(arch):
    for func in (bipolar_conv(), two_bit_dense()):
        source = cuda_source(func, arch)
        assert B1_MMA in source
        assert ".xor.popc" not in source


def test_before_sm_80_bits_are_counted_on_cuda_cores():
    source = cuda_source(bipolar_conv(), "sm_75")
    assert "mma" not in source.replace("#include <mma.h>", "") and "__popc" in source


@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])
def test_sub_byte_layers_use_the_integer_mma(arch):
    assert U8S8_MMA in cuda_source(subbyte_conv(), arch)


def test_before_sm_75_bytes_are_multiplied_on_cuda_cores():
    source = cuda_source(subbyte_conv(), "sm_70")
    assert "mma.sync" not in source and "__shared__" in source


def test_the_rule_leaves_functions_without_a_gemm():
    x = te.placeholder((4, 4), "float32", "x")
    func = te.create_prim_func([x, te.compute((4, 4), lambda i, j: x[i, j] * 2, name="double")])
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    assert LowBitCUDA().apply(func, target, False) is None


def test_architectures_of_targets_and_profiles():
    assert cuda_arch(profile.load("cuda", "sm_89").tvm_target()) == 89
    assert cuda_arch(tvm.target.Target({"kind": "llvm"})) == 0
