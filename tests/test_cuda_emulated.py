"""The CUDA kernels' generated code, run on the CPU under emulation (`cuda_emulator.py`: one OS
thread per CUDA thread, the PTX MMA computed from the ISA's fragment layouts), agrees
bit-exactly with the int64 reference: the tensor-core path (sm_80: 1-bit and integer MMA, the
epilogue fused from shared memory), the integer MMA with bits on CUDA cores (sm_75), and CUDA
cores only (sm_70). The kernels are built as LowerLowBit builds them on CUDA targets, with the
bit-serial pixel and weight terms as inputs (computed here on the CPU), and also with those
terms computed inside the kernel's function, where the epilogue is a pass of its own.

Skipped without g++ (C++20). This is not a GPU run: README says CUDA outputs are unverified
until `pytest -m gpu` has run on one.
"""

import functools
import shutil
import zlib

import numpy as np
import pytest
import tvm
from conv_cases import BIPOLAR, CONVS, DENSES, SMALL, Conv, pair_id, pairs
from cuda_emulator import emulate
from lowbit_kernels import pack_weight, random_codes, upstream
from tvm import te
from tvm.s_tir import dlight

from tvmbits.ops import reference
from tvmbits.ops.bitpack import bitpack
from tvmbits.ops.bitserial_gemm import bitserial_conv2d_gemm, bitserial_dense_gemm, weight_sums
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import subbyte_pack
from tvmbits.ops.subbyte_gemm import subbyte_conv2d_gemm, subbyte_dense_gemm
from tvmbits.ops.window import Window
from tvmbits.schedules import default_rules
from tvmbits.schedules.cuda import schedule_cuda

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ (C++20) compiles the emulated kernels")]

U2, S2, U4, S4 = Encoding("unsigned", 2), Encoding("signed", 2), Encoding("unsigned", 4), Encoding("signed", 4)
U8 = Encoding("unsigned", 8)
RESNET_3x3 = Conv(2, (14, 14), 128, 128, (3, 3), (1, 1), (1, 1, 1, 1))  # whole 64 × 64 tiles, 13 thread blocks


def _cpu(func):
    return tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "llvm"}))


@functools.cache
def _kernel(kernel, a_shape, out_channels, w_shape, w_dtype, act, wgt, conv_args, arch, separate, tile):
    """The scheduled CUDA PrimFunc and the CPU functions that compute its term inputs."""
    codes = te.placeholder(a_shape, "int32", "codes")
    weight = te.placeholder(w_shape, w_dtype, "weight")
    inputs, terms, given = [codes, weight], [], {}
    if kernel == "subbyte":
        compute = subbyte_conv2d_gemm if conv_args else subbyte_dense_gemm
        out = compute(subbyte_pack(codes, act), weight, a_shape[-1], out_channels, act, wgt, *conv_args)
    else:
        window = Window.of(a_shape[1:3], w_shape[1:3], *conv_args) if conv_args else None
        if separate and wgt.offset:  # what `bitserial_offset` gives: β Σ value_a over the taps inside
            out_size = window.out_size if window else ()
            given["offset"] = te.placeholder((a_shape[0], *out_size), "int32", "offset")
        if separate and act.offset:
            given["weight_term"] = te.placeholder(
                [int(d) for d in weight_sums(weight, act, wgt, window).shape], "int32", "weight_term")
            table = weight_sums(weight, act, wgt, window)
            terms.append((_cpu(te.create_prim_func([weight, table])), tuple(int(d) for d in table.shape)))
        compute = bitserial_conv2d_gemm if conv_args else bitserial_dense_gemm
        out = compute(bitpack(codes, act.bits), weight, a_shape[-1], act, wgt, *conv_args, **given)
        inputs += list(given.values())
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host="llvm")
    mod = tvm.IRModule({"main": te.create_prim_func([*inputs, out])})
    if tile is None:
        with target:
            mod = dlight.ApplyDefaultSchedule(*default_rules(target))(mod)
    else:  # one point of the tuning design space, with the function's indices as they come
        mod = schedule_cuda(mod["main"], target, tile, narrow=False).mod
    return mod, target, sorted(given), terms, tuple(int(d) for d in out.shape)


def run(kernel, a, w, act, wgt, *conv_args, arch="sm_80", separate=True, tile=None, folder):
    w_packed = pack_weight(kernel, w, wgt)
    mod, target, given, terms, shape = _kernel(kernel, a.shape, w.shape[0], w_packed.shape, w_packed.dtype.name,
                                               act, wgt, tuple(tuple(x) for x in conv_args), arch, separate, tile)
    args = [upstream(act, a), w_packed]
    if "offset" in given:  # β Σ (value_a − α): β Σ_i c_i popc(A_i) over the taps inside
        bits = act.decode(a) - act.offset
        ones = np.ones((1, *w.shape[1:]), np.int64)
        sums = reference.conv2d_nhwc(bits, ones, *conv_args)[..., 0] if conv_args else bits.sum(1)
        args.append((wgt.offset * sums).astype(np.int32))
    if "weight_term" in given:
        ((table_func, table_shape),) = terms
        table = tvm.runtime.tensor(np.zeros(table_shape, np.int32))
        table_func(tvm.runtime.tensor(w_packed), table)
        args.append(table.numpy())
    out = np.zeros(shape, np.int32)
    emulate(mod, target, [np.ascontiguousarray(x) for x in args] + [out], folder)
    return out


def check(kernel, conv, act, wgt, folder, **options):
    rng = np.random.default_rng(zlib.crc32(f"{kernel}{conv}{pair_id((act, wgt))}".encode()))
    if isinstance(conv, tuple):  # dense (batch, features, out_features)
        batch, features, out_features = conv
        a, w = random_codes(rng, act, (batch, features)), random_codes(rng, wgt, (out_features, features))
        expected = reference.dense(act.decode(a), wgt.decode(w))
        got = run(kernel, a, w, act, wgt, folder=folder, **options)
    else:
        a = random_codes(rng, act, (conv.batch, *conv.size, conv.channels))
        w = random_codes(rng, wgt, (conv.out_channels, *conv.kernel, conv.channels))
        expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), conv.strides, conv.padding)
        got = run(kernel, a, w, act, wgt, conv.strides, conv.padding, folder=folder, **options)
    np.testing.assert_array_equal(got, expected)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("emulated")


CASES = [  # (kernel, geometry, act, wgt, arch, separate)
    ("bitserial", CONVS[1], BIPOLAR, BIPOLAR, "sm_80", True),
    ("bitserial", RESNET_3x3, BIPOLAR, BIPOLAR, "sm_80", True),
    ("bitserial", CONVS[2], U2, S2, "sm_80", True),
    ("bitserial", CONVS[3], BIPOLAR, U2, "sm_80", True),
    ("bitserial", CONVS[1], BIPOLAR, BIPOLAR, "sm_80", False),
    ("bitserial", DENSES[2], BIPOLAR, BIPOLAR, "sm_90", True),
    ("bitserial", CONVS[5], BIPOLAR, BIPOLAR, "sm_75", True),
    ("subbyte", CONVS[1], U4, S4, "sm_80", True),
    ("subbyte", DENSES[1], BIPOLAR, BIPOLAR, "sm_90", True),
    ("subbyte", DENSES[2], U8, U8, "sm_80", True),
    ("subbyte", CONVS[2], S2, U2, "sm_70", True),
]


@pytest.mark.parametrize("kernel, geometry, act, wgt, arch, separate", CASES,
                         ids=[f"{c[0]}-{c[1]}-{pair_id(c[2:4])}-{c[4]}{'' if c[5] else '-inside'}" for c in CASES])
def test_emulated_cuda_kernels_match_reference(kernel, geometry, act, wgt, arch, separate, folder):
    check(kernel, geometry, act, wgt, folder, arch=arch, separate=separate)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_75"])
@pytest.mark.parametrize("kernel", ["bitserial", "subbyte"])
@pytest.mark.parametrize("pair", pairs(SMALL), ids=pair_id)
@pytest.mark.parametrize("geometry", CONVS + DENSES, ids=str)
def test_emulated_cuda_kernels_every_geometry(geometry, pair, kernel, arch, folder):
    check(kernel, geometry, *pair, folder, arch=arch)
