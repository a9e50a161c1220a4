"""Build and run the low-bit ops the way the compiler chains them, for the op tests.

Activations go through the TE packing op (`bitpack` / `subbyte_pack`) inside the same PrimFunc
as the kernel, fed what the upstream op gives (int32 values for signed, codes otherwise), the
bit-serial conv's input zero-padded by the packing where the conv reads it so;
weights are packed with the numpy twin, as at compile time, and a bipolar conv's border table
(`border_table`) is computed from them beforehand by its own function, as the compiler folds
it at compile time: `main`'s inputs are `inputs(...)`, then the output. The PrimFunc is built
with the default CPU schedule (`LowBitCPU`, as the compiler does) unless `scheduled=False`;
builds are cached by signature.
"""

import functools
from typing import NamedTuple

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import dlight

from tvmbits.ops.bitpack import bitpack, pack_bits
from tvmbits.ops.bitserial_conv2d import bitserial_conv2d_nhwc, border_table, reads_border_table, reads_padded_input
from tvmbits.ops.bitserial_dense import bitserial_dense
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import block_weight, subbyte_pack
from tvmbits.ops.subbyte_conv2d import subbyte_conv2d_nhwc
from tvmbits.ops.subbyte_dense import subbyte_dense
from tvmbits.ops.window import Window
from tvmbits.schedules.cpu import LowBitCPU
from tvmbits.schedules.byte_dot import bitserial_pairs
from tvmbits.targets.profile import load

TARGET = tvm.target.Target({"kind": "llvm"})
# what `auto` runs a 2-bit × 2-bit and a 1-bit × 2-bit layer on when compiling for this machine
# (`choose_kernel`)
KERNEL_2x2 = "subbyte" if bitserial_pairs(load("host").tvm_target()) < 4 else "bitserial"
KERNEL_1x2 = "subbyte" if bitserial_pairs(load("host").tvm_target()) < 2 else "bitserial"
KERNELS = {"bitserial": (bitserial_conv2d_nhwc, bitserial_dense), "subbyte": (subbyte_conv2d_nhwc, subbyte_dense)}


def random_codes(rng: np.random.Generator, encoding: Encoding, shape) -> np.ndarray:
    return rng.integers(0, 1 << encoding.bits, size=shape)


def upstream(encoding: Encoding, codes: np.ndarray) -> np.ndarray:
    """What binarize/quantize hand to the packing op: int32 values, or 0/1 codes for bipolar."""
    return (codes if encoding.kind == "bipolar" else encoding.decode(codes)).astype("int32")


def run(kernel: str, a_codes, w_codes, act: Encoding, wgt: Encoding, *conv_args, scheduled=True, target=TARGET):
    """int32 output of `kernel` ("bitserial" | "subbyte") on codes, built for `target`; conv2d
    when given (strides, padding), else dense."""
    func, out_shape = _build(*_signature(kernel, a_codes, w_codes, act, wgt, conv_args, scheduled, target))
    out = tvm.runtime.tensor(np.zeros(out_shape, "int32"))
    func(*(tvm.runtime.tensor(x) for x in inputs(kernel, a_codes, w_codes, act, wgt, *conv_args)), out)
    return out.numpy()


def inputs(kernel: str, a_codes, w_codes, act: Encoding, wgt: Encoding, *conv_args) -> list[np.ndarray]:
    """What the built `main` takes before its output: the upstream activations, the packed
    weights and, for a conv that reads one, the border table of those weights."""
    arrays = [upstream(act, a_codes), pack_weight(kernel, w_codes, wgt)]
    window = _border_window(kernel, a_codes.shape, w_codes.shape, act, wgt, conv_args)
    if window is not None:
        table = _border_function(arrays[1].shape, a_codes.shape[-1], window)
        out = tvm.runtime.tensor(np.zeros(table.shape, "int32"))
        table.function(tvm.runtime.tensor(arrays[1]), out)
        arrays.append(out.numpy())
    return arrays


def build(kernel: str, a_codes, w_codes, act: Encoding, wgt: Encoding, *conv_args, scheduled=True, target=TARGET):
    """The compiled module `run` would call."""
    return _build(*_signature(kernel, a_codes, w_codes, act, wgt, conv_args, scheduled, target))[0]


def _signature(kernel, a_codes, w_codes, act, wgt, conv_args, scheduled, target) -> tuple:
    w_packed = pack_weight(kernel, w_codes, wgt)
    conv_args = tuple(tuple(arg) for arg in conv_args)
    return (kernel, a_codes.shape, w_codes.shape, w_packed.shape, w_packed.dtype.name,
            act, wgt, conv_args, scheduled, target)


def pack_weight(kernel: str, w_codes: np.ndarray, wgt: Encoding) -> np.ndarray:
    """The weight `kernel` reads for `w_codes`: packed bits, or the sub-byte blocked bytes."""
    if kernel == "bitserial":
        return pack_bits(w_codes, wgt.bits)
    return block_weight(wgt.decode(w_codes), wgt)


def kernel_te(kernel: str, data: te.Tensor, weight: te.Tensor, border: te.Tensor | None, channels: int,
              out_channels: int, act: Encoding, wgt: Encoding, conv_args: tuple) -> te.Tensor:
    """`kernel`'s packing op and compute on int32 `data` (what upstream gives), a weight
    placeholder and, for a bit-serial conv that reads one, its border table: conv2d when given
    `conv_args` (strides, padding), else dense."""
    conv, dense = KERNELS[kernel]
    compute = conv if conv_args else dense
    if kernel == "bitserial":
        extra = {"border": border} if border is not None else {}
        padding = (0, 0, 0, 0)
        if conv_args and reads_padded_input(act, wgt, Window.of(data.shape[1:3], weight.shape[1:3], *conv_args)):
            padding, extra["padded_input"] = conv_args[1], True  # the packing writes the padded input
        return compute(bitpack(data, act.bits, padding), weight, channels, act, wgt, *conv_args, **extra)
    return compute(subbyte_pack(data, act), weight, channels, out_channels, act, wgt, *conv_args)


def _border_window(kernel, a_shape, w_shape, act, wgt, conv_args) -> Window | None:
    """The conv's window when the kernel reads a border table, else None."""
    if kernel != "bitserial" or not conv_args:
        return None
    window = Window.of(a_shape[1:3], w_shape[1:3], *conv_args)
    return window if reads_border_table(act, wgt, window) else None


class _Table(NamedTuple):
    function: object
    shape: tuple


@functools.cache
def _border_function(w_packed_shape, channels: int, window: Window) -> _Table:
    weight = te.placeholder(w_packed_shape, "uint32", "weight")
    table = border_table(weight, channels, window)
    return _Table(tvm.compile(te.create_prim_func([weight, table]), target=TARGET), _shape(table.shape))


def _shape(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


@functools.cache
def _build(kernel, a_shape, w_shape, w_packed_shape, w_dtype, act, wgt, conv_args, scheduled, target):
    codes = te.placeholder(a_shape, "int32", "codes")
    weight = te.placeholder(w_packed_shape, w_dtype, "weight")
    window = _border_window(kernel, a_shape, w_shape, act, wgt, conv_args)
    border = None
    if window is not None:
        border = te.placeholder(_border_function(w_packed_shape, a_shape[-1], window).shape, "int32", "border")
    out = kernel_te(kernel, codes, weight, border, a_shape[-1], w_shape[0], act, wgt, conv_args)
    args = [codes, weight] + ([border] if border is not None else [])
    mod = tvm.IRModule({"main": te.create_prim_func([*args, out])})
    if scheduled:
        with target:
            mod = dlight.ApplyDefaultSchedule(LowBitCPU())(mod)
        assert mod["main"].attrs["tirx.is_scheduled"]
    func = tvm.compile(mod, target=target)
    return func, tuple(int(d) for d in out.shape)
