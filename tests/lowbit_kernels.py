"""Build and run the low-bit ops the way the compiler chains them, for the op tests.

Activations go through the TE packing op (`bitpack` / `subbyte_pack`) inside the same PrimFunc
as the kernel, fed what the upstream op gives (int32 values for signed, codes otherwise);
weights are packed with the numpy twin, as at compile time. The PrimFunc is built with the
default CPU schedule (`LowBitCPU`, as the compiler does) unless `scheduled=False`; builds are
cached by signature.
"""

import functools

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import dlight

from tvmbits.ops.bitpack import bitpack, pack_bits
from tvmbits.ops.bitserial_conv2d import bitserial_conv2d_nhwc
from tvmbits.ops.bitserial_dense import bitserial_dense
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import pack_subbyte, subbyte_pack
from tvmbits.ops.subbyte_conv2d import subbyte_conv2d_nhwc
from tvmbits.ops.subbyte_dense import subbyte_dense
from tvmbits.schedules.cpu import LowBitCPU

TARGET = tvm.target.Target({"kind": "llvm"})
KERNELS = {
    ("bitserial", "conv2d"): (bitpack, pack_bits, bitserial_conv2d_nhwc),
    ("bitserial", "dense"): (bitpack, pack_bits, bitserial_dense),
    ("subbyte", "conv2d"): (subbyte_pack, pack_subbyte, subbyte_conv2d_nhwc),
    ("subbyte", "dense"): (subbyte_pack, pack_subbyte, subbyte_dense),
}


def random_codes(rng: np.random.Generator, encoding: Encoding, shape) -> np.ndarray:
    return rng.integers(0, 1 << encoding.bits, size=shape)


def upstream(encoding: Encoding, codes: np.ndarray) -> np.ndarray:
    """What binarize/quantize hand to the packing op: int32 values, or 0/1 codes for bipolar."""
    return (codes if encoding.kind == "bipolar" else encoding.decode(codes)).astype("int32")


def run(kernel: str, a_codes, w_codes, act: Encoding, wgt: Encoding, *conv_args, scheduled=True):
    """int32 output of `kernel` ("bitserial" | "subbyte") on codes; conv2d when given
    (strides, padding), else dense."""
    op = "conv2d" if conv_args else "dense"
    _, np_pack, _ = KERNELS[kernel, op]
    w_packed = np_pack(w_codes, wgt.bits)
    conv_args = tuple(tuple(arg) for arg in conv_args)
    func, out_shape = _build(kernel, op, a_codes.shape, w_packed.shape, act, wgt, conv_args, scheduled)
    out = tvm.runtime.tensor(np.zeros(out_shape, "int32"))
    func(tvm.runtime.tensor(upstream(act, a_codes)), tvm.runtime.tensor(w_packed), out)
    return out.numpy()


@functools.cache
def _build(kernel, op, a_shape, w_packed_shape, act, wgt, conv_args, scheduled):
    te_pack, _, compute = KERNELS[kernel, op]
    codes = te.placeholder(a_shape, "int32", "codes")
    dtype = "uint32" if kernel == "bitserial" else "uint8"
    weight = te.placeholder(w_packed_shape, dtype, "weight")
    out = compute(te_pack(codes, act.bits), weight, a_shape[-1], act, wgt, *conv_args)
    mod = tvm.IRModule({"main": te.create_prim_func([codes, weight, out])})
    if scheduled:
        with TARGET:
            mod = dlight.ApplyDefaultSchedule(LowBitCPU())(mod)
        assert mod["main"].attrs["tirx.is_scheduled"]
    func = tvm.compile(mod, target=TARGET)
    return func, tuple(int(d) for d in out.shape)
