"""On a CUDA GPU (marker `gpu`; skipped on machines without one): the CUDA kernels and whole CUDA
builds give exactly what the integer reference and this machine's CPU build give.

Until these have run on a GPU, CUDA outputs are unverified (README). The kernels are built for
the local GPU's architecture, so the tensor-core path runs on sm_80+ and the CUDA-core one
below it.
"""

import functools
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tvm
from conv_cases import BIPOLAR, CONVS, DENSES, SMALL, pair_id, pairs
from lowbit_kernels import pack_weight, random_codes, upstream
from onnx_models import dyadic_input, tiny_bnn
from tvm import te
from tvm.s_tir import dlight

import tvmbits
from tvmbits.ops import reference
from tvmbits.ops.bitpack import bitpack
from tvmbits.ops.bitserial_gemm import bitserial_conv2d_gemm, bitserial_dense_gemm
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import subbyte_pack
from tvmbits.ops.subbyte_gemm import subbyte_conv2d_gemm, subbyte_dense_gemm
from tvmbits.runtime import _register_cuda_compiler
from tvmbits.schedules import default_rules

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU on this machine")]

WIDER = [(Encoding("unsigned", 3), Encoding("signed", 4)), (Encoding("signed", 4), BIPOLAR),
         (BIPOLAR, Encoding("unsigned", 3)), (Encoding("unsigned", 8), Encoding("signed", 8))]
GEMMS = {"bitserial": (bitserial_conv2d_gemm, bitserial_dense_gemm), "subbyte": (subbyte_conv2d_gemm, subbyte_dense_gemm)}


def local_target() -> tvm.target.Target:
    arch = "sm_" + tvm.cuda(0).compute_version.replace(".", "")
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host="llvm")


@functools.cache
def _build(kernel, a_shape, out_channels, w_shape, w_dtype, act, wgt, conv_args):
    codes = te.placeholder(a_shape, "int32", "codes")
    weight = te.placeholder(w_shape, w_dtype, "weight")
    conv, dense = GEMMS[kernel]
    if kernel == "bitserial":
        packed, sizes = bitpack(codes, act.bits), (a_shape[-1],)
    else:
        packed, sizes = subbyte_pack(codes, act), (a_shape[-1], out_channels)
    out = (conv if conv_args else dense)(packed, weight, *sizes, act, wgt, *conv_args)
    target = local_target()
    mod = tvm.IRModule({"main": te.create_prim_func([codes, weight, out])})
    with target:
        mod = dlight.ApplyDefaultSchedule(*default_rules(target))(mod)
    _register_cuda_compiler(tvm.cuda(0))
    return tvm.compile(mod, target=target), tuple(int(d) for d in out.shape)


def run(kernel, a, w, act, wgt, *conv_args):
    w_packed = pack_weight(kernel, w, wgt)
    func, shape = _build(kernel, a.shape, w.shape[0], w_packed.shape, w_packed.dtype.name, act, wgt,
                         tuple(tuple(x) for x in conv_args))
    dev = tvm.cuda(0)
    out = tvm.runtime.tensor(np.zeros(shape, "int32"), dev)
    func(tvm.runtime.tensor(upstream(act, a), dev), tvm.runtime.tensor(w_packed, dev), out)
    return out.numpy()


@pytest.mark.parametrize("kernel", ["bitserial", "subbyte"])
@pytest.mark.parametrize("pair", pairs(SMALL) + WIDER, ids=pair_id)
@pytest.mark.parametrize("conv", CONVS, ids=str)
def test_conv2d_on_the_gpu_matches_reference(kernel, conv, pair):
    act, wgt = pair
    rng = np.random.default_rng(zlib.crc32(f"{kernel}{conv}{pair_id(pair)}".encode()))
    a = random_codes(rng, act, (conv.batch, *conv.size, conv.channels))
    w = random_codes(rng, wgt, (conv.out_channels, *conv.kernel, conv.channels))
    expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), conv.strides, conv.padding)
    np.testing.assert_array_equal(run(kernel, a, w, act, wgt, conv.strides, conv.padding), expected)


@pytest.mark.parametrize("kernel", ["bitserial", "subbyte"])
@pytest.mark.parametrize("pair", pairs(SMALL) + WIDER, ids=pair_id)
@pytest.mark.parametrize("shape", DENSES + [(3, 300, 20), (64, 4096, 1000)], ids=str)
def test_dense_on_the_gpu_matches_reference(kernel, shape, pair):
    act, wgt = pair
    batch, features, out_features = shape
    rng = np.random.default_rng(zlib.crc32(f"{kernel}{shape}{pair_id(pair)}".encode()))
    a = random_codes(rng, act, (batch, features))
    w = random_codes(rng, wgt, (out_features, features))
    np.testing.assert_array_equal(run(kernel, a, w, act, wgt), reference.dense(act.decode(a), wgt.decode(w)))


def check_model_equals_cpu_build(model, x: np.ndarray, **options):
    """The model's CUDA build and this machine's CPU build give the same outputs, bit for bit."""
    outputs = []
    for target in ("cuda", "host"):
        compiled = tvmbits.load(tvmbits.compile(model, target, **options))
        name = compiled.inputs[0]["name"]
        outputs.append(compiled(**{name: x}))
    on_gpu, on_cpu = outputs
    assert on_gpu.keys() == on_cpu.keys()
    for key in on_cpu:
        np.testing.assert_array_equal(on_gpu[key], on_cpu[key])


def test_tiny_bnn_on_the_gpu_equals_the_cpu_build():
    check_model_equals_cpu_build(tiny_bnn(channels=(64, 64, 64), size=12), dyadic_input([1, 3, 12, 12], seed=3))


@pytest.mark.parametrize("batch", [1, 8])
def test_binarized_resnet18_on_the_gpu_equals_the_cpu_build(batch):
    from bireal_resnet18 import build_model, make_input

    model = build_model(input_size=64, num_classes=10)
    for value in (*model.graph.input, *model.graph.output):  # the graph is batch-agnostic past its edges
        value.type.tensor_type.shape.dim[0].dim_value = batch
    x = np.concatenate([make_input(input_size=64, seed=seed) for seed in range(batch)])
    check_model_equals_cpu_build(model, x)


def test_digits_bnn_on_the_gpu_equals_the_cpu_build(tmp_path):
    import digits_bnn
    import torch

    net, (_, x_test, _, _) = digits_bnn.train(epochs=2, seed=1)
    path = tmp_path / "digits.onnx"
    digits_bnn.export_qonnx(net, torch.zeros(digits_bnn.SHAPE), str(path), input_names=["input"])
    for image in x_test[:16]:
        check_model_equals_cpu_build(path, image[None])


def _benchmark():
    """benchmarks/cuda.py as a module (by path: its name would shadow the `cuda` package)."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "cuda.py"
    spec = importlib.util.spec_from_file_location("tvmbits_cuda_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_binary_gemm_reaches_30_percent_of_the_1bit_tensor_core_peak():
    bench = _benchmark()
    peak = bench.bmma_peak(repeat=10)
    rate = bench.GEMM_SIZE**3 / (bench.binary_gemm(bench.GEMM_SIZE, repeat=10) * 1e-3)
    assert rate >= 0.3 * peak, f"{rate / 1e12:.1f} T bit-MACs/s, {100 * rate / peak:.0f}% of {peak / 1e12:.1f}"
