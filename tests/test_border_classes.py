"""The bit-serial conv reads a zero-padded input, so its hot loop tests no tap for padding; bipolar ×
bipolar restores what the padded taps added from a per-border-class table (`Window.border_class`).
These tests pin the classes, the hot loop's shape and exactness where the classes are unusual:
padding wider than the kernel reaches (no interior), odd sizes, stride 2, one-sided padding."""

import numpy as np
import pytest
import tvm
import tvm.sym
from lowbit_kernels import random_codes, run
from tvm import te

import lowbit_kernels
from conv_cases import CONVS
from tvmbits.ops import bitserial_conv2d as conv_module
from tvmbits.ops import reference
from tvmbits.ops.bitpack import bitpack
from tvmbits.ops.bitserial_conv2d import bitserial_conv2d_nhwc, reads_border_table
from tvmbits.ops.encoding import Encoding
from tvmbits.ops.window import Window
from tvmbits.schedules.cpu import LowBitCPU

BIPOLAR = Encoding("bipolar", 1)
WINDOWS = [  # (in size, kernel, strides, padding)
    ((56, 56), (3, 3), (1, 1), (1, 1, 1, 1)),
    ((56, 56), (3, 3), (2, 2), (1, 1, 1, 1)),
    ((7, 5), (3, 3), (2, 1), (1, 0, 2, 3)),
    ((3, 2), (5, 5), (1, 1), (2, 2, 2, 2)),  # every output reads padding: no interior
    ((9, 4), (7, 1), (3, 1), (3, 0, 3, 0)),
]


@pytest.fixture
def border_table_everywhere(monkeypatch):
    """The border table on outputs of any size (its default spares the smallest outputs); the
    kernel builds that `lowbit_kernels` caches by signature are built afresh either side."""
    lowbit_kernels._build.cache_clear()
    monkeypatch.setattr(conv_module, "MIN_PIXELS_FOR_BORDER_TABLE", 0)
    yield
    lowbit_kernels._build.cache_clear()


def _taps_inside(window: Window, index: int, axis: int) -> tuple[int, ...]:
    start = index * window.strides[axis] - window.padding[axis]
    return tuple(k for k in range(window.kernel[axis]) if 0 <= start + k < window.in_size[axis])


def _value(expr) -> int:
    return int(tvm.sym.Analyzer().simplify(expr))


@pytest.mark.parametrize("args", WINDOWS, ids=str)
def test_a_class_member_reads_the_taps_of_every_output_of_its_class(args):
    window = Window.of(*args)
    for axis in (0, 1):
        classes = [_value(window.border_class(tvm.tirx.const(i, "int32"), axis)) for i in range(window.out_size[axis])]
        assert sorted(set(classes)) == list(range(window.class_count(axis)))
        for index, border_class in enumerate(classes):
            member = _value(window.class_member(tvm.tirx.const(border_class, "int32"), axis))
            assert _taps_inside(window, member, axis) == _taps_inside(window, index, axis)


def _update_block_script(act: Encoding, wgt: Encoding, a_shape, conv_args) -> str:
    codes = te.placeholder(a_shape, "int32", "codes")
    weight = te.placeholder((4, 3, 3, wgt.bits, 1), "uint32", "weight")
    window = Window.of(a_shape[1:3], (3, 3), *conv_args)
    args = [codes, weight]
    if reads_border_table(act, wgt, window):  # an input, as the compiler passes it
        args.append(te.placeholder((window.class_count(0), window.class_count(1), 4), "int32", "border"))
    out = bitserial_conv2d_nhwc(bitpack(codes, act.bits), weight, a_shape[-1], act, wgt, *conv_args,
                                border=args[2] if len(args) > 2 else None)
    func = LowBitCPU().apply(te.create_prim_func([*args, out]), tvm.target.Target({"kind": "llvm"}), False)
    script = func.mod["main"].script()
    start = script.index('T.sblock("bitserial_conv2d_update")')
    return script[start : script.index("T.sblock(", start + 1)]


@pytest.mark.parametrize(
    "act, wgt, tested",
    [(BIPOLAR, BIPOLAR, False), (Encoding("unsigned", 2), BIPOLAR, False), (BIPOLAR, Encoding("signed", 2), True)],
    ids=["bipolar", "unsigned-act", "bipolar-act-multibit-weight"],
)
def test_hot_loop_tests_a_tap_for_padding_only_for_bipolar_activations_with_multibit_weights(act, wgt, tested):
    update = _update_block_script(act, wgt, (1, 9, 8, 20), ((1, 1), (1, 1, 1, 1)))  # 72 output pixels
    assert ("T.if_then_else" in update) == tested


def test_small_bipolar_outputs_keep_the_tap_test():
    update = _update_block_script(BIPOLAR, BIPOLAR, (1, 7, 7, 20), ((1, 1), (1, 1, 1, 1)))  # 49 pixels
    assert "T.if_then_else" in update


@pytest.mark.parametrize("args", WINDOWS[2:], ids=str)
@pytest.mark.parametrize("scheduled", [True, False])
def test_w1a1_conv_is_exact_on_unusual_borders(args, scheduled, border_table_everywhere):
    (height, width), kernel, strides, padding = args
    rng = np.random.default_rng(7)
    a = random_codes(rng, BIPOLAR, (2, height, width, 45))
    w = random_codes(rng, BIPOLAR, (17, *kernel, 45))
    got = run("bitserial", a, w, BIPOLAR, BIPOLAR, strides, padding, scheduled=scheduled)
    expected = reference.conv2d_nhwc(BIPOLAR.decode(a), BIPOLAR.decode(w), strides, padding)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("conv", [c for c in CONVS if any(c.padding)], ids=str)
def test_w1a1_conv_grid_is_exact_with_the_border_table(conv, border_table_everywhere):
    rng = np.random.default_rng(8)
    a = random_codes(rng, BIPOLAR, (conv.batch, *conv.size, conv.channels))
    w = random_codes(rng, BIPOLAR, (conv.out_channels, *conv.kernel, conv.channels))
    got = run("bitserial", a, w, BIPOLAR, BIPOLAR, conv.strides, conv.padding)
    expected = reference.conv2d_nhwc(BIPOLAR.decode(a), BIPOLAR.decode(w), conv.strides, conv.padding)
    np.testing.assert_array_equal(got, expected)
