"""Sub-byte kernels on Arm board profiles: tensorized into SDOT/UDOT on a profile with the dot
product (`rpi5`, Cortex-A76), into the NEON widening multiply-accumulate (SMULL, ADDP, SADALP)
without it (`rpi4`, Cortex-A72); bit-exact against the int64 reference when run on the emulated
board of the profile's QEMU CPU model, and read back from the disassembly.

The emulated runs need root and build the arm64 board's root file system on first use (about
4 min, cached; see `tvmbits.board.emulate`).
"""

import os
import re
import shutil
import subprocess
import zlib
from dataclasses import replace

import numpy as np
import onnx
import pytest
import tvm
from tvm import te
from arm_kernels import Case, run_on_board
from conv_cases import BIPOLAR, CONVS, DENSES, Conv, pair_id, pairs
from lowbit_kernels import kernel_te, pack_weight, random_codes
from onnx import helper
from onnx_models import make_model

import tvmbits
from tvmbits.ops import reference
from tvmbits.ops.encoding import Encoding
from tvmbits.schedules.arm_dot import NEON_16x4, NEON_BYTES_16x4, SDOT_16x4, UDOT_16x4, arm_intrinsic
from tvmbits.schedules.byte_dot import bitserial_pairs
from tvmbits.schedules.cpu import LowBitCPU
from tvmbits.targets.profile import load

OBJDUMP = "aarch64-linux-gnu-objdump"
DOT = re.compile(r"^\s*[0-9a-f]+:\s+(?:[0-9a-f]{8}\s+)?([su]dot)\s", re.M)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="an emulated board needs root (debootstrap, chroot, mount)")

S4, U4, S8, U8 = Encoding("signed", 4), Encoding("unsigned", 4), Encoding("signed", 8), Encoding("unsigned", 8)
# SDOT/NEON (activations below 128), UDOT (uint8 weights), and the plain fallback (8-bit activations);
# W1A2 and W2A2 are what rpi5's `auto` runs as bytes
PAIRS = [(BIPOLAR, BIPOLAR), (Encoding("unsigned", 3), S4), (S4, S4), (Encoding("unsigned", 5), S8),
         (Encoding("signed", 7), S8), (S4, BIPOLAR), (Encoding("signed", 6), U8), (U8, Encoding("signed", 7)),
         (S8, S8), (Encoding("unsigned", 2), Encoding("signed", 2)), (Encoding("unsigned", 2), BIPOLAR)]
MAIN = [BIPOLAR, Encoding("unsigned", 3), S4, Encoding("unsigned", 5), Encoding("signed", 7), S8, U8]
# output channels in multiples of 16 (the tensorized blocks), odd channel counts and paddings
CONV_GRID = [replace(CONVS[i], out_channels=o) for i, o in ((1, 16), (2, 32), (4, 16), (7, 48))]
WIDE = replace(CONVS[5], out_channels=32)  # 64 input channels: SDOT 16 channels at a time
# a 7×7 output: no tile of 2–5 pixels divides it, so the dot-product tile is 7 pixels of 8 channels
# (by element, 16 input channels a chunk); with 36 input channels, 7 pixels of broadcast steps
SEVEN = replace(CONVS[1], batch=1, size=(7, 7), channels=64, out_channels=32)
SEVEN_UNCHUNKED = replace(SEVEN, channels=36)

def conv_case(conv, act, wgt, seed) -> Case:
    rng = np.random.default_rng(seed)
    a = random_codes(rng, act, (conv.batch, *conv.size, conv.channels))
    w = random_codes(rng, wgt, (conv.out_channels, *conv.kernel, conv.channels))
    expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), conv.strides, conv.padding)
    return Case(f"conv_{conv}_{pair_id((act, wgt))}", "subbyte", a, w, act, wgt, expected, (conv.strides, conv.padding))


def dense_case(shape, act, wgt, seed) -> Case:
    batch, features, out_features = shape
    rng = np.random.default_rng(seed)
    a = random_codes(rng, act, (batch, features))
    w = random_codes(rng, wgt, (out_features, features))
    expected = reference.dense(act.decode(a), wgt.decode(w))
    return Case(f"dense_{'x'.join(map(str, shape))}_{pair_id((act, wgt))}", "subbyte", a, w, act, wgt, expected)


def extreme_case(act=Encoding("signed", 7), wgt=S8) -> Case:
    """The largest products: the widening NEON schedule sums two in int16 (activation 63, byte
    127, × −128), the byte one keeps each in a byte (s4 × s4: byte 15 × −8)."""
    top = (1 << (act.bits - 1)) - 1  # the code of the largest signed value
    a, w = np.full((1, 3, 3, 64), top), np.full((16, 3, 3, 64), 1 << (wgt.bits - 1))  # w: the smallest
    expected = reference.conv2d_nhwc(act.decode(a), wgt.decode(w), (1, 1), (0, 0, 0, 0))
    return Case(f"extreme_{pair_id((act, wgt))}", "subbyte", a, w, act, wgt, expected, ((1, 1), (0, 0, 0, 0)))


def default_cases() -> list[Case]:
    """The default run's cases (CI time): every pair on the wide conv (16-channel SDOT steps),
    one dense layer and the extreme values; the first grid conv's pairs are under -m slow."""
    cases = [conv_case(WIDE, *pair, seed=zlib.crc32(f"{WIDE}{pair_id(pair)}".encode())) for pair in PAIRS]
    cases += [dense_case((3, 70, 32), *PAIRS[1], seed=11)]
    cases += [conv_case(SEVEN, *pair, seed=13) for pair in [(U4, S4), (Encoding("signed", 6), U8)]]  # SDOT, UDOT
    cases += [conv_case(SEVEN_UNCHUNKED, U4, S4, seed=17)]
    return cases + [extreme_case(), extreme_case(S4, S4)]


def blocked_cnn(seed=0):
    """conv 16→32 → ReLU → conv 32→32 stride 2 → ReLU → Gemm to 16: every layer's output channels
    a multiple of 16, so every sub-byte kernel is tensorized."""
    rng = np.random.default_rng(seed)
    init = {
        "w0": rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.2,
        "w1": rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.2,
        "w2": rng.standard_normal((16, 32 * 4 * 4)).astype(np.float32) * 0.05,
    }
    nodes = [
        helper.make_node("Conv", ["input", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Flatten", ["r1"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w2"], ["logits"], transB=1, name="fc"),
    ]
    return make_model(nodes, [("input", [1, 16, 8, 8])], [("logits", [1, 16])], init)


def intrinsic_of(profile: str, act: Encoding, wgt: Encoding) -> str | None:
    from tvmbits.ops.subbyte import data_max, weight_dtype, weight_max

    return arm_intrinsic(load(profile).tvm_target(), "uint8", weight_dtype(wgt), data_max(act), weight_max(wgt))


def test_arm_profiles_choose_their_kernels():
    assert [bitserial_pairs(load(name).tvm_target()) for name in ("rpi3", "rpi4", "rpi5", "arm64")] == [4, 4, 1, 4]
    assert intrinsic_of("rpi5", S4, S4) == SDOT_16x4 and intrinsic_of("rpi4", S4, S4) == NEON_BYTES_16x4
    assert intrinsic_of("rpi4", U4, S4) == NEON_BYTES_16x4 and intrinsic_of("rpi4", U4, U4) == NEON_16x4  # 15·8, 15·15
    assert intrinsic_of("rpi4", Encoding("unsigned", 5), S8) == NEON_16x4
    assert intrinsic_of("rpi5", Encoding("signed", 6), U8) == UDOT_16x4
    assert intrinsic_of("rpi4", Encoding("signed", 6), U8) is None  # plain vector code
    assert intrinsic_of("rpi5", U8, S4) is None and intrinsic_of("rpi4", S8, S4) is None  # bytes of 128 and more
    assert intrinsic_of("x86_64", S4, S4) is None


@pytest.mark.parametrize("profile, pair, present, absent", [
    ("rpi5", (U4, S4), ["sdot"], ["smull", "sadalp", "udot"]),
    ("rpi5", (Encoding("signed", 6), U8), ["udot"], ["smull", "sadalp"]),
    ("rpi4", (U4, S4), ["mul", "saddlp", "sadalp"], ["sdot", "udot", "smull"]),
    ("rpi4", (Encoding("unsigned", 5), S8), ["smull", "addp", "sadalp"], ["sdot", "udot"]),
], ids=["rpi5-sdot", "rpi5-udot", "rpi4-bytes", "rpi4-widening"])
def test_kernel_assembly(profile, pair, present, absent):
    case = conv_case(CONV_GRID[0], *pair, seed=0)
    asm = case.module(load(profile).tvm_target()).mod.inspect_source("asm")
    ops = set(re.findall(r"^\s+([a-z0-9]+)\s+v\d+\.", asm, re.M))  # vector instructions
    assert set(present) <= ops and not set(absent) & ops, sorted(ops)


def test_sdot_by_element_on_16_channel_steps():
    """64 input channels: each 16-byte activation load feeds four SDOTs by element (`v.4b[j]`)."""
    asm = conv_case(WIDE, U4, S4, seed=0).module(load("rpi5").tvm_target()).mod.inspect_source("asm")
    by_element = re.findall(r"^\s+sdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b\[([0-3])\]", asm, re.M)
    assert set(by_element) == {"0", "1", "2", "3"} and not re.search(r"^\s+sdot\s+v\d+\.4s, v\d+\.16b, v\d+\.16b$", asm, re.M)


def rpi5_conv(conv: Conv, tunable: bool = False):
    """A U4 × S4 `conv` scheduled for rpi5 (SDOT), by the default schedule or (`tunable`) one
    drawn from its tuning design space."""
    codes = te.placeholder((conv.batch, *conv.size, conv.channels), "int32", "codes")
    weight = te.placeholder(pack_weight("subbyte", np.zeros((conv.out_channels, *conv.kernel, conv.channels), int),
                                        S4).shape, "int8", "weight")
    out = kernel_te("subbyte", codes, weight, None, conv.channels, conv.out_channels, U4, S4,
                    (conv.strides, conv.padding))
    return LowBitCPU().apply(te.create_prim_func([codes, weight, out]), load("rpi5").tvm_target(), tunable)


@pytest.mark.parametrize("size, channels, tile, by_element", [
    (7, 64, [1, 7, 1], True), (7, 36, [1, 7, 1], False), (8, 64, [1, 4, 1], True), (13, 64, [1, 1, 2], True)])
def test_dot_product_tile_where_no_four_pixel_one_fits(size, channels, tile, by_element):
    """(rows, columns, channel vectors) of the rpi5 register tile of a conv to 32 channels, and
    whether its SDOTs read activations by element: 4 pixels of 16-channel vectors on an 8×8
    output; 7 pixels of 8-channel vectors on a 7×7 one (where 16-channel vectors would leave one
    pixel, every SDOT loading its own weights), or of broadcast 4-channel steps where the input
    channels are not whole 16-channel chunks; on 13×13 no tile of 2–8 pixels divides the output,
    and one pixel of two 16-channel vectors stays."""
    sch = rpi5_conv(replace(SEVEN, size=(size, size), channels=channels))
    write_back = sch.get_loops(sch.get_sblock("subbyte_conv2d_local"))
    assert [int(sch.get(loop).extent) for loop in write_back[-4:-1]] == tile
    asm = tvm.compile(sch.mod, target=load("rpi5").tvm_target()).mod.inspect_source("asm")
    assert bool(re.search(r"^\s+sdot\s+v\d+\.4s, v\d+\.16b, v\d+\.4b\[", asm, re.M)) == by_element


def test_dot_product_steps_run_over_the_tile():
    """128 input channels (32 DOT steps) on rpi5: 8 steps unrolled together (`arm_dot.DOT_UNROLL`,
    two 16-channel chunks of 4) inside a loop of 4, each step outside the tile's pixels, so its
    weights are loaded once and live briefly; no register spills in the kernel (LLVM spilled
    accumulators when each pixel ran all 4 steps of a chunk)."""
    sch = rpi5_conv(replace(SEVEN, size=(8, 8), channels=128))
    loops = [sch.get(loop) for loop in sch.get_loops(sch.get_sblock("subbyte_conv2d_update_o"))]
    kinds = [(int(loop.extent), loop.kind) for loop in loops[3:8]]  # after the parallel loop and the taps
    unrolled = tvm.tirx.ForKind.UNROLLED  # chunks, a chunk's 4 steps, rows, columns
    assert kinds == [(4, tvm.tirx.ForKind.SERIAL), (2, unrolled), (4, unrolled), (1, unrolled), (4, unrolled)]
    asm = tvm.compile(sch.mod, target=load("rpi5").tvm_target()).mod.inspect_source("asm")
    loop = sdot_loop(asm)
    assert sum(line.startswith("sdot") for line in loop) == 8 * 4 * 4  # steps × pixels × 4 vectors
    assert not [line for line in loop if "[sp" in line], loop  # no spills


def test_tuned_dot_product_schedules_unroll_whole_chunks():
    """Schedules drawn from the rpi5 design space compile: whatever unrolling `tvmbits tune`
    samples, each SDOT's lane is a constant (a chunk's 4 steps are always unrolled together)."""
    for _ in range(6):
        sch = rpi5_conv(replace(SEVEN, size=(8, 8), channels=128), tunable=True)
        assert "sdot" in tvm.compile(sch.mod, target=load("rpi5").tvm_target()).mod.inspect_source("asm")


def sdot_loop(asm: str) -> list[str]:
    """The instructions of the loop (LLVM assembly: a label and a branch back to it) with the
    most SDOTs."""
    lines = [line.strip() for line in asm.splitlines()]
    labels = {line[:-1]: i for i, line in enumerate(lines) if re.fullmatch(r"\.LBB\w+:", line)}
    loops = [lines[labels[m.group(1)]:i] for i, line in enumerate(lines)
             if (m := re.match(r"b(?:\.\w+)?\s+(\.LBB\w+)$", line)) and labels.get(m.group(1), i) < i]
    return max(loops, key=lambda loop: sum(line.startswith("sdot") for line in loop))


@pytest.mark.skipif(shutil.which(OBJDUMP) is None, reason=f"{OBJDUMP} is not installed (scripts/setup.sh)")
@pytest.mark.parametrize("profile", ["rpi5", "rpi4"])
def test_model_subbyte_kernels_disassembly(tmp_path, profile):
    """`tvmbits compile --target rpi5` puts SDOT into every sub-byte kernel, `rpi4` none."""
    onnx.save(blocked_cnn(), tmp_path / "cnn.onnx")
    art = tvmbits.compile(tmp_path / "cnn.onnx", profile, wbits=4, abits=4, all_layers=True)
    assert {layer["kernel"] for layer in art.metadata["layers"]} == {"subbyte"}
    text = subprocess.run([OBJDUMP, "-d", str(art.library)], capture_output=True, text=True, check=True).stdout
    bodies = {f.split("\n", 1)[0]: f for f in re.split(r"\n(?=[0-9a-f]+ <)", text)}
    kernels = {h: b for h, b in bodies.items() if "subbyte" in h and h.endswith("_compute_>:")
               and ("conv2d" in h or "dense" in h)}
    assert len(kernels) == 3, sorted(kernels)
    for header, body in kernels.items():
        dots = DOT.findall(body)
        if profile == "rpi5":
            assert dots and set(dots) <= {"sdot", "udot"}, header
        else:
            assert not dots and re.search(r"\bsadalp\s+v", body), header


@pytest.mark.skipif(shutil.which(OBJDUMP) is None, reason=f"{OBJDUMP} is not installed (scripts/setup.sh)")
@pytest.mark.parametrize("profile, kernel", [("rpi5", "subbyte"), ("rpi4", "bitserial")])
def test_w1a2_layers_run_as_bytes_where_the_cpu_has_sdot(tmp_path, profile, kernel):
    """`auto` on W1A2: SDOT bytes on rpi5 (fewer instructions than bit-serial), bit-serial on rpi4."""
    onnx.save(blocked_cnn(), tmp_path / "cnn.onnx")
    art = tvmbits.compile(tmp_path / "cnn.onnx", profile, wbits=1, abits=2, all_layers=True)
    assert {layer["kernel"] for layer in art.metadata["layers"]} == {kernel}


@needs_root
@pytest.mark.parametrize("profile", ["rpi5", "rpi4"])
def test_bit_exact_on_the_emulated_cpu(profile):
    results = run_on_board(profile, default_cases())
    assert set(results.values()) == {"ok"}, {k: v for k, v in results.items() if v != "ok"}


@needs_root
def test_dot_product_kernel_stops_a_board_without_it():
    """An rpi5 build on the rpi4 board's CPU model (Cortex-A72 has no SDOT): illegal instruction."""
    case = conv_case(CONV_GRID[0], U4, S4, seed=0)
    results = run_on_board("rpi5", [case], board="rpi4")
    assert results[case.name].startswith("not run"), results  # on its own board: the test above


@needs_root
@pytest.mark.slow
@pytest.mark.parametrize("profile", ["rpi5", "rpi4"])
def test_bit_exact_grid_on_the_emulated_cpu(profile):
    cases = [conv_case(conv, *pair, seed=zlib.crc32(f"{conv}{pair_id(pair)}g".encode()))
             for conv in [*CONV_GRID, WIDE] for pair in pairs(MAIN)]
    cases += [dense_case(shape, *pair, seed=5) for shape in [*DENSES, (1, 70, 16)] for pair in pairs(MAIN)]
    results = run_on_board(profile, cases, timeout=3600)
    assert set(results.values()) == {"ok"}, {k: v for k, v in results.items() if v != "ok"}
