"""The default CPU schedule (`LowBitCPU`) on fused Relax functions: it applies, keeps results
bit-exact, and has the structure it promises (parallel outer loop, register accumulator,
unrolled inner loop, epilogue inlined)."""

import numpy as np
import pytest
import tvm
from functools import partial

from lowbit_kernels import pack_weight, random_codes, upstream
from tvm import relax, te, topi
from tvm.s_tir import dlight

from tvmbits.ops import reference
from tvmbits.ops.bitpack import bitpack, fill_then_pack, pack_bits
from tvmbits.ops import bitserial_conv2d as bitserial_conv2d_module
from tvmbits.ops.bitserial_conv2d import bitserial_conv2d_nhwc, border_table, reads_border_table, reads_padded_input
from tvmbits.ops.bitserial_dense import bitserial_dense
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.subbyte import bias, subbyte_pack, weight_offset
from tvmbits.ops.subbyte_conv2d import subbyte_conv2d_nhwc
from tvmbits.ops.subbyte_dense import subbyte_dense
from tvmbits.ops.window import Window
from tvmbits.schedules.cpu import PREPACK, LowBitCPU, ParallelCPU

X86 = tvm.target.Target({"kind": "llvm", "num-cores": 2})
ARM64 = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
AVX512 = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "skylake-avx512", "num-cores": 2})
PACKING = {"bitserial": lambda x, act: bitpack(x, act.bits), "subbyte": subbyte_pack}
PACK_NAMES = {"bitserial": "bitpack", "subbyte": "subbyte_pack"}
CONV = {"bitserial": bitserial_conv2d_nhwc, "subbyte": subbyte_conv2d_nhwc}
DENSE = {"bitserial": bitserial_dense, "subbyte": subbyte_dense}


def lowered_module(kernel, op, a_shape, w_codes, act, wgt, conv_args, epilogue):
    """Relax: int32 activations → pack → kernel (op_pattern 4) → `epilogue`, as the compiler
    emits them (the sub-byte weight offset a constant, a bipolar conv's border table a function
    of the weight constant, folded, its input zero-padded by the packing), fused."""
    compute = (CONV if op == "conv2d" else DENSE)[kernel]
    sizes = (a_shape[-1],) if kernel == "bitserial" else (a_shape[-1], w_codes.shape[0])
    weight = relax.const(pack_weight(kernel, w_codes, wgt))
    extra = {}
    if kernel == "subbyte" and bias(act):
        extra["offset"] = relax.const(weight_offset(wgt.decode(w_codes), act))
    window = Window.of(a_shape[1:3], w_codes.shape[1:3], *conv_args) if op == "conv2d" else None
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(a_shape, "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            padded = kernel == "bitserial" and window is not None and reads_padded_input(act, wgt, window)
            pack = partial(PACKING[kernel], act=act)
            if padded:  # the packing writes the conv's zero-padded input
                pack = partial(bitpack, bits=act.bits, padding=window.padding)
                compute = partial(compute, padded_input=True)
            packed = bb.emit_te(pack, x, primfunc_name_hint=PACK_NAMES[kernel])
            if padded:
                packing = bb.lookup_binding(packed).args[0]
                bb.update_func(packing, fill_then_pack(bb.get()[packing]))
            if kernel == "bitserial" and window is not None and reads_border_table(act, wgt, window):
                extra["border"] = bb.emit_te(lambda w: border_table(w, a_shape[-1], window), weight,
                                             primfunc_name_hint="bitserial_border")
            keys = list(extra)
            acc = bb.emit_te(
                lambda d, w, *rest: compute(d, w, *sizes, act, wgt, *conv_args, **dict(zip(keys, rest))),
                packed,
                weight,
                *extra.values(),
                primfunc_name_hint=f"{kernel}_{op}",
                primfunc_attrs={"op_pattern": 4},
            )
            out = bb.emit_output(epilogue(bb, acc))
        bb.emit_func_output(out)
    mod = tvm.transform.Sequential(
        [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ]
    )(bb.get())
    return mod


def scale_epilogue(scale):
    def epilogue(bb, acc):
        return bb.emit(relax.op.multiply(bb.emit(relax.op.astype(acc, "float32")), relax.const(scale)))

    return epilogue


def threshold_epilogue(scale, bias):
    def epilogue(bb, acc):
        y = bb.emit(relax.op.multiply(bb.emit(relax.op.astype(acc, "float32")), relax.const(scale)))
        y = bb.emit(relax.op.add(y, relax.const(bias)))
        return bb.emit(relax.op.greater(y, relax.const(np.float32(0))))

    return epilogue


def schedule(mod, target):
    with target:
        return dlight.ApplyDefaultSchedule(LowBitCPU())(mod)


def run(mod, a_codes, act):
    vm = relax.VirtualMachine(tvm.compile(mod, target=X86), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(upstream(act, a_codes))).numpy()


@pytest.mark.parametrize("kernel, act, wgt", [("bitserial", Encoding("bipolar", 1), Encoding("bipolar", 1)),
                                              ("subbyte", Encoding("unsigned", 4), Encoding("signed", 4))],
                         ids=["bitserial", "subbyte"])
def test_conv_write_back_is_vectorised_and_exact(kernel, act, wgt):
    """The tile's write-back, its epilogue inlined, stores whole channel vectors (left to LLVM it
    became gathers and scatters)."""
    a_shape, conv_args = (1, 7, 7, 64), ((1, 1), (1, 1, 1, 1))  # 49 pixels: no border table
    rng = np.random.default_rng(4)
    a, w = random_codes(rng, act, a_shape), random_codes(rng, wgt, (32, 3, 3, 64))
    scale = rng.uniform(0.5, 2, 32).astype(np.float32)
    scheduled = schedule(lowered_module(kernel, "conv2d", a_shape, w, act, wgt, conv_args, scale_epilogue(scale)),
                         X86)
    script = scheduled[f"fused_{kernel}_conv2d_cast_multiply"].script()
    write_back = "subbyte_conv2d_intermediate_local" if kernel == "subbyte" else "bitserial_conv2d_local"
    loop = script[: script.index(f'with T.sblock("{write_back}")')].rstrip().splitlines()[-1]
    assert "in T.vectorized(T.int64(16)):" in loop
    expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), *conv_args).astype(np.float32) * scale
    np.testing.assert_array_equal(run(scheduled, a, act), expected)


@pytest.mark.parametrize("target, reduction", [(AVX512, [3, 2, 3, 2]), (ARM64, [3, 3, 4])], ids=["avx512", "arm64"])
def test_bitserial_conv_runs_words_in_pairs_on_wide_tiles(target, reduction):
    """The reduction loops of a W1A1 conv of 128 channels (4 words a tap) on an 8×8 output: on
    AVX-512 (a tile of 16 accumulator vectors) the words run 2 at a time with a row's taps inside
    each pair (ky, word pairs, kx, 2 words); on AArch64 NEON (4 vectors) a tap's 4 words run
    together (ky, kx, words). Exact either way (run on this machine)."""
    act = wgt = Encoding("bipolar", 1)
    a_shape, conv_args = (1, 8, 8, 128), ((1, 1), (1, 1, 1, 1))
    rng = np.random.default_rng(6)
    a, w = random_codes(rng, act, a_shape), random_codes(rng, wgt, (64, 3, 3, 128))
    scale = rng.uniform(0.5, 2, 64).astype(np.float32)
    scheduled = schedule(lowered_module("bitserial", "conv2d", a_shape, w, act, wgt, conv_args,
                                        scale_epilogue(scale)), target)
    sch = tvm.s_tir.Schedule(scheduled["fused_bitserial_conv2d_cast_multiply"])
    loops = sch.get_loops(sch.get_sblock("bitserial_conv2d_update"))
    assert [int(sch.get(loop).extent) for loop in loops[1:len(reduction) + 1]] == reduction
    expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), *conv_args).astype(np.float32) * scale
    np.testing.assert_array_equal(run(scheduled, a, act), expected)


def test_fused_dense_with_scale_epilogue_is_scheduled_and_exact():
    act, wgt = Encoding("bipolar", 1), Encoding("signed", 2)
    rng = np.random.default_rng(0)
    a, w = random_codes(rng, act, (3, 70)), random_codes(rng, wgt, (5, 70))
    scale = rng.uniform(0.5, 2, 5).astype(np.float32)
    mod = lowered_module("bitserial", "dense", (3, 70), w, act, wgt, (), scale_epilogue(scale))
    scheduled = schedule(mod, X86)
    func = scheduled["fused_bitserial_dense_cast_multiply"]
    assert func.attrs["tirx.is_scheduled"]
    script = func.script()
    assert "T.parallel(" in script and "T.unroll(" in script
    buffers = {(b.scope(), str(b.dtype)) for b in func.body.block.alloc_buffers}
    assert buffers == {("local", "int32"), ("global", "uint32")}  # accumulators, regrouped weights
    expected = reference.dense(act.decode(a), wgt.decode(w)).astype(np.float32) * scale
    np.testing.assert_array_equal(run(scheduled, a, act), expected)


CASES = [
    ("bitserial", Encoding("bipolar", 1), Encoding("bipolar", 1)),
    ("bitserial", Encoding("unsigned", 2), Encoding("signed", 2)),
    ("subbyte", Encoding("unsigned", 4), Encoding("signed", 4)),
    ("subbyte", Encoding("signed", 8), Encoding("bipolar", 1)),
]


@pytest.mark.parametrize("kernel, act, wgt", CASES, ids=lambda v: str(getattr(v, "kind", v)))
def test_fused_conv2d_with_threshold_epilogue(kernel, act, wgt, monkeypatch):
    monkeypatch.setattr(bitserial_conv2d_module, "MIN_PIXELS_FOR_BORDER_TABLE", 0)  # a 4×5 output
    a_shape, conv_args = (2, 7, 6, 37), ((2, 1), (1, 0, 2, 1))
    rng = np.random.default_rng(1)
    a, w = random_codes(rng, act, a_shape), random_codes(rng, wgt, (8, 3, 3, 37))
    scale = rng.uniform(-1, 1, 8).astype(np.float32)
    bias = rng.uniform(-4, 4, 8).astype(np.float32)
    mod = lowered_module(kernel, "conv2d", a_shape, w, act, wgt, conv_args, threshold_epilogue(scale, bias))
    scheduled = schedule(mod, X86)
    name = f"fused_{kernel}_conv2d_cast_multiply_add_greater"
    assert scheduled[name].attrs["tirx.is_scheduled"]
    # the int32 accumulation never reaches memory: the one local buffer is the accumulators; the
    # global ones are the weights regrouped by output-channel group (bit-serial: its input comes
    # zero-padded from the packing; a bipolar conv's border table is an input, folded at compile
    # time), or the padded input alone (sub-byte: the kernel reads its weights as bytes, unpacked
    # at load)
    func = scheduled[name]
    buffers = [(b.scope(), str(b.dtype), [int(d) for d in b.shape]) for b in func.body.block.alloc_buffers]
    assert [dtype for scope, dtype, _ in buffers if scope == "local"] == ["int32"]
    assert not [shape for scope, dtype, shape in buffers if scope == "global" and dtype == "int32"]
    border = kernel == "bitserial" and act.kind == wgt.kind == "bipolar"
    inputs = [[int(d) for d in p.ty.shape] for p in func.params]
    assert ([3, 2, 8] in inputs) == border  # [row classes, column classes, O]
    others = {dtype for scope, dtype, _ in buffers if scope == "global" and dtype != "int32"}
    assert others == ({"uint32"} if kernel == "bitserial" else {"uint8"})
    if kernel == "bitserial":  # the kernel reads the padded packing as it is
        assert [2, 1 + 7 + 2, 6 + 1, act.bits, 2] in inputs and "bitserial_pad" not in func.script()
    acc = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), *conv_args).astype(np.float32)
    expected = acc * scale + bias > 0
    np.testing.assert_array_equal(run(scheduled, a, act), expected)


@pytest.mark.parametrize("kernel", ["bitserial", "subbyte"])
def test_packing_functions_are_scheduled(kernel):
    act, wgt = Encoding("unsigned", 2), Encoding("unsigned", 2)
    mod = lowered_module(kernel, "dense", (2, 40), np.ones((3, 40), int), act, wgt, (), lambda bb, acc: acc)
    scheduled = schedule(mod, X86)
    pack = scheduled[PACK_NAMES[kernel]]
    assert pack.attrs["tirx.is_scheduled"]
    assert "T.parallel(" in pack.script()


def test_an_injective_producer_in_the_same_function_stays_exact():
    act, wgt = Encoding("unsigned", 2), Encoding("signed", 2)
    rng = np.random.default_rng(2)
    a, w = random_codes(rng, act, (1, 5, 6, 40)), random_codes(rng, wgt, (4, 3, 3, 40))
    codes = te.placeholder(a.shape, "int32", "codes")
    weight = te.placeholder(pack_bits(w, 2).shape, "uint32", "weight")
    padded = topi.nn.pad(bitpack(codes, 2), [0, 1, 2, 0, 0], [0, 1, 0, 0, 0])  # unsigned: code 0 = 0
    out = bitserial_conv2d_nhwc(padded, weight, 40, act, wgt, (1, 1), (0, 0, 0, 0))
    mod = schedule(tvm.IRModule({"main": te.create_prim_func([codes, weight, out])}), X86)
    assert mod["main"].attrs["tirx.is_scheduled"]
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "int32"))
    tvm.compile(mod, target=X86)(
        tvm.runtime.tensor(a.astype("int32")), tvm.runtime.tensor(pack_bits(w, 2)), result
    )
    expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), (1, 1), (1, 2, 1, 0))
    np.testing.assert_array_equal(result.numpy(), expected)


def test_other_functions_are_left_to_other_rules():
    x = te.placeholder((4, 4), "float32")
    func = te.create_prim_func([x, te.compute((4, 4), lambda i, j: x[i, j] + 1, name="add")])
    assert LowBitCPU().apply(func, X86, False) is None
    codes = te.placeholder((2, 40), "int32")
    kernel = te.create_prim_func([codes, bitpack(codes, 1)])
    assert LowBitCPU().apply(kernel, tvm.target.Target({"kind": "cuda"}), False) is None


@pytest.mark.parametrize("kernel, act, wgt", CASES[1:3], ids=lambda v: str(getattr(v, "kind", v)))
def test_builds_for_arm64(kernel, act, wgt):
    rng = np.random.default_rng(3)
    w = random_codes(rng, wgt, (8, 3, 3, 37))
    mod = lowered_module(kernel, "conv2d", (1, 6, 6, 37), w, act, wgt, ((1, 1), (1, 1, 1, 1)), scale_epilogue(np.ones(8, np.float32)))
    mod = schedule(mod, ARM64)
    assert mod[f"fused_{kernel}_conv2d_cast_multiply"].attrs["tirx.is_scheduled"]
    assert tvm.compile(mod, target=ARM64) is not None


def test_float_conv2d_is_register_tiled_and_matches_numpy():
    """TOPI's float conv2d_nhwc (a network's float first layer) takes the same register tile."""
    rng = np.random.default_rng(4)
    x = rng.integers(-8, 8, (1, 9, 12, 3)).astype(np.float32)
    w = rng.integers(-8, 8, (20, 3, 3, 3)).astype(np.float32)  # 20 channels: a padded vector
    data = te.placeholder(x.shape, "float32", "x")
    weight = te.placeholder(w.shape, "float32", "w")
    out = topi.nn.conv2d(data, weight, (2, 2), (1, 1, 1, 1), (1, 1), data_layout="NHWC", kernel_layout="OHWI")
    mod = schedule(tvm.IRModule({"main": te.create_prim_func([data, weight, out])}), X86)
    script = mod["main"].script()
    assert "T.parallel(" in script and "T.vectorized(" in script
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "float32"))
    tvm.compile(mod, target=X86)(tvm.runtime.tensor(x), tvm.runtime.tensor(w), result)
    expected = reference.conv2d_nhwc(x.astype(np.int64), w.astype(np.int64), (2, 2), (1, 1, 1, 1))
    np.testing.assert_array_equal(result.numpy(), expected.astype(np.float32))


@pytest.mark.parametrize("target, tile", [(X86, [1, 1, 2]), (ARM64, [1, 4, 1])], ids=["x86", "arm64"])
def test_float_conv2d_tile_favours_pixels_on_arm(target, tile):
    """(rows, columns, channel vectors) of a float conv's register tile on an 8×8 output of 64
    channels: on Arm (4 vectors) 4 pixels of one vector, each weight vector loaded once for
    them; elsewhere (this 128-bit x86 target: 2 vectors) the channel vectors first."""
    data = te.placeholder((1, 8, 8, 3), "float32", "x")
    weight = te.placeholder((64, 3, 3, 3), "float32", "w")
    out = topi.nn.conv2d(data, weight, (1, 1), (1, 1, 1, 1), (1, 1), data_layout="NHWC", kernel_layout="OHWI")
    sch = LowBitCPU().apply(te.create_prim_func([data, weight, out]), target, False)
    write_back = sch.get_loops(sch.get_sblock("conv2d_nhwc_local"))  # the tile's, lanes innermost
    assert [int(sch.get(loop).extent) for loop in write_back[-4:-1]] == tile
    assert tvm.compile(sch.mod, target=target) is not None


@pytest.mark.parametrize("shape, parallel", [((40, 70, 9), True), ((4, 4), False)])
def test_other_functions_run_in_parallel_above_a_size(shape, parallel):
    x = te.placeholder(shape, "float32")
    y = te.compute(shape[::-1], lambda *i: x(*i[::-1]), name="transpose")
    mod = ParallelCPU().apply(te.create_prim_func([x, y]), X86, False).mod
    assert ("T.parallel(" in mod["main"].script()) == parallel
    data = np.random.default_rng(5).standard_normal(shape).astype("float32")
    out = tvm.runtime.tensor(np.zeros(shape[::-1], "float32"))
    tvm.compile(mod, target=X86)(tvm.runtime.tensor(data), out)
    np.testing.assert_array_equal(out.numpy(), data.T)


@pytest.mark.parametrize("channels, copies", [(48, [("w_global", [3, 70, 16])]), (37, [])])
def test_float_matmul_with_channel_contiguous_weights_is_vectorised_and_exact(channels, copies):
    """A float classifier (`matmul` by a [K, O] weight) vectorises over O; where 16 divides O, its
    weight is regrouped into [O/16, K, 16] by a copy marked for `PrepackWeights` (made at compile
    time), else read as it is."""
    rng = np.random.default_rng(6)
    a = rng.integers(-8, 8, (2, 70)).astype(np.float32)
    b = rng.integers(-8, 8, (70, channels)).astype(np.float32)
    x, w = te.placeholder(a.shape, "float32", "x"), te.placeholder(b.shape, "float32", "w")
    k = te.reduce_axis((0, 70), "k")
    out = te.compute((2, channels), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k), name="matmul")
    mod = schedule(tvm.IRModule({"main": te.create_prim_func([x, w, out])}), X86)
    func = mod["main"]
    assert "T.vectorized(" in func.script() and "T.parallel(" in func.script()
    buffers = func.body.block.alloc_buffers
    assert [(b.name, [int(d) for d in b.shape]) for b in buffers if b.scope() == "global"] == copies
    assert (PREPACK in func.script()) == bool(copies)
    result = tvm.runtime.tensor(np.zeros((2, channels), "float32"))
    tvm.compile(mod, target=X86)(tvm.runtime.tensor(a), tvm.runtime.tensor(b), result)
    np.testing.assert_array_equal(result.numpy(), a @ b)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_nhwc_pooling_is_vectorised_over_channels_and_exact(kind):
    """Pooling reads its padding in place and runs its window loops outside channel vectors."""
    x = np.random.default_rng(6).standard_normal((1, 40, 40, 32)).astype("float32")
    data = te.placeholder(x.shape, "float32", "x")
    out = topi.nn.pool2d(data, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), kind, count_include_pad=True, layout="NHWC")
    with X86:
        mod = dlight.ApplyDefaultSchedule(ParallelCPU())(tvm.IRModule({"main": te.create_prim_func([data, out])}))
    script = mod["main"].script()
    assert "T.parallel(" in script and "T.vectorized(16)" in script
    assert "pad_temp" not in script  # inlined
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], "float32"))
    tvm.compile(mod, target=X86)(tvm.runtime.tensor(x), result)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf if kind == "max" else 0)
    windows = np.stack([padded[:, i:i + 40:2, j:j + 40:2] for i in range(3) for j in range(3)])
    expected = windows.max(axis=0) if kind == "max" else windows.sum(axis=0) / 9
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6)
