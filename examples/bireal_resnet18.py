"""Binarized ResNet-18, Bi-Real-Net style, as plain ONNX with seeded random weights.

    python examples/bireal_resnet18.py [-o bireal_resnet18.onnx] [--input-size 224] [--classes 1000] [--seed 0]

Graph (ONNX opset 17, default domain only, IR version 8; NCHW float32, batch 1)::

    input [1,3,S,S]
    stem    Conv 7x7/2 pad 3 (3→64, float weights) → Mul a → Add b (a folded batch norm)
            → MaxPool 3x3/2 pad 1
    stages  widths 64, 128, 256, 512, two basic blocks each; the first block of stages 2-4 has
            stride 2. Each 3x3 conv is its own residual unit (Bi-Real):
                y = Add(Mul(Conv(Sign(x), Wb), a), b) + shortcut(x)
            Wb: a ±1 tensor times s_o = 2^-k (k in 0..4) per output channel, pads 1, no bias;
            a, b: per-channel constants of shape [1,C,1,1]. The shortcut is the identity, or
            where the unit changes stride and width: AveragePool 2x2/2 → Conv 1x1 (float
            weights, no bias) → Mul → Add.
    head    GlobalAveragePool → Flatten → Gemm (transB=1, with bias) → logits [1,num_classes]

That is 16 binarized convs (Sign → Conv), 1 float stem conv, 3 float 1x1 downsample convs and
1 Gemm. S must be a multiple of 32, so that every AveragePool window lies inside its input.

Exactness design. Every tensor before GlobalAveragePool is computed exactly in float32, in any
summation order: its values, and every partial sum of every conv, are integer multiples of a
power of two 2^-e with integer parts below 2^24 (float32's exact-integer range). A compiler's
output can then be compared with ONNX Runtime's bit for bit up to there; float round-off starts
at GlobalAveragePool and Gemm (whose weights are plain Gaussian floats). The grids:

* input (`make_input`): multiples of 2^-4 in [-1, 1];
* stem: weights -1, 0 or 1 times 2^-2, so the conv gives multiples of 2^-6; Mul 2^-q, q in
  {0, 1}, so multiples of 2^-7;
* binarized units: Conv(±1, ±s_o) is s_o times an even integer (an even count of ±1 terms,
  at most 9·C_in of them). The Mul is a = m·2^-t / s_o with m in {2, 3, 4} and
  t = round(log2(6·sqrt(9·C_in))), so a branch is an even integer times 2^-t, whatever s_o,
  and typically about 1/2 in size;
* downsample shortcuts: AveragePool is a sum of 4 divided by 4; the 1x1 conv weights are 0 or
  ±1 with DOWNSAMPLE_TAPS = 4 nonzero taps per output channel; Mul 2^-q, q in {0, 1}.
  (A dense real-valued 1x1 conv would add about log2(sqrt(C_in)) significant bits at each of
  the three downsamples, more than float32 has to spare after the stem's.)
* Add constants: integers times 2^-3 (in [-2, -1] for the stem, which recentres values its
  max pool pushes up, and in [-1/2, 1/2] elsewhere), plus the parity term below.

No Sign input is ever exactly 0 (ONNX Sign(0) = 0, while a bit-serial kernel reads 0 as +1):
the residual stream of stage i holds odd multiples of 2^-f_i. The stem's and each
downsample's Add carry the term 2^-f_i, half the grid of everything else in that sum; binarized
branches and all other Add constants are even multiples of 2^-f_i, so adding them keeps every
value odd. f_1 = 8, and a downsample adds 3 (AveragePool's division, its Mul, the parity bit),
so f_2, f_3, f_4 = 11, 14, 17: stage 4 is exact while its values stay below 2^24 · 2^-17 = 128.
With seeds 0-3 (model and input) they stay below 34, at most 22.1 significant bits anywhere
(the convs' sums of absolute terms included), a margin of about 2 bits.
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2

INPUT_EXP = 4  # make_input: multiples of 2^-4 in [-1, 1]
STEM_WEIGHT_EXP = 2  # stem weights: -1, 0 or 1 times 2^-2
STEM_MUL_EXPS = (0, 1)  # stem Mul: 2^-q, q drawn from these
SHIFT_EXP = 3  # Add constants: integers times 2^-3 (plus the parity term)
STEM_SHIFT_RANGE = (-16, -8)  # times 2^-3: -2 .. -1
SHIFT_RANGE = (-4, 4)  # times 2^-3: -1/2 .. 1/2
BRANCH_GAIN = 6  # binarized Mul: m · 2^-t / s_o with 2^t ≈ BRANCH_GAIN · sqrt(9 · C_in)
DOWNSAMPLE_TAPS = 4  # nonzero ±1 weights per output channel of a 1x1 downsample conv
DOWNSAMPLE_MUL_EXPS = (0, 1)  # downsample Mul: 2^-q, q drawn from these


class _Graph:
    """Collects nodes and float32 initializers; a node's output is named after the node."""

    def __init__(self):
        self.nodes = []
        self.initializers = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op_type: str, inputs: list, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name


def _per_channel(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float64).reshape(1, -1, 1, 1)


def _shift(rng: np.random.Generator, channels: int, int_range: tuple, parity_exp: int | None = None) -> np.ndarray:
    """Add constant: integers in int_range times 2^-SHIFT_EXP, plus 2^-parity_exp if given."""
    shift = rng.integers(int_range[0], int_range[1] + 1, channels) * 2.0**-SHIFT_EXP
    if parity_exp is not None:
        shift = shift + 2.0**-parity_exp
    return _per_channel(shift)


def _stem(g: _Graph, rng: np.random.Generator) -> tuple[str, int]:
    """Float Conv → Mul → Add → MaxPool; returns the output and its parity exponent f_1."""
    c = WIDTHS[0]
    w = g.const("stem.weight", rng.integers(-1, 2, (c, 3, 7, 7)) * 2.0**-STEM_WEIGHT_EXP)
    mul_exps = rng.choice(STEM_MUL_EXPS, c)
    # Conv · Mul: multiples of 2^-(INPUT_EXP + STEM_WEIGHT_EXP + q_max); the parity bit is one below
    parity_exp = INPUT_EXP + STEM_WEIGHT_EXP + int(mul_exps.max()) + 1
    a = g.const("stem.mul", _per_channel(2.0**-mul_exps))
    b = g.const("stem.add", _shift(rng, c, STEM_SHIFT_RANGE, parity_exp))
    h = g.node("Conv", ["input", w], "stem.conv", kernel_shape=[7, 7], strides=[2, 2], pads=[3] * 4)
    h = g.node("Add", [g.node("Mul", [h, a], "stem.scale"), b], "stem.shift")
    h = g.node("MaxPool", [h], "stem.pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    return h, parity_exp


def _downsample(
    g: _Graph, rng: np.random.Generator, x: str, c_in: int, c_out: int, parity_exp: int, name: str
) -> tuple[str, int]:
    """AveragePool 2x2/2 → sparse ±1 Conv 1x1 → Mul 2^-q → Add; returns it and its parity exponent.

    x holds odd multiples of 2^-f, so a sum of 4 is a multiple of 2^-(f-1) and the average one
    of 2^-(f+1); the ±1 conv keeps that grid and the Mul refines it to 2^-(f+1+q_max). The Add's
    parity term sits one bit below: the new stream's exponent is f + 2 + q_max.
    """
    w = np.zeros((c_out, c_in, 1, 1))
    for o in range(c_out):
        taps = rng.choice(c_in, DOWNSAMPLE_TAPS, replace=False)
        w[o, taps, 0, 0] = rng.choice([-1.0, 1.0], DOWNSAMPLE_TAPS)
    mul_exps = rng.choice(DOWNSAMPLE_MUL_EXPS, c_out)
    new_parity_exp = parity_exp + 2 + int(mul_exps.max())
    w = g.const(f"{name}.weight", w)
    a = g.const(f"{name}.mul", _per_channel(2.0**-mul_exps))
    b = g.const(f"{name}.add", _shift(rng, c_out, SHIFT_RANGE, new_parity_exp))
    h = g.node("AveragePool", [x], f"{name}.pool", kernel_shape=[2, 2], strides=[2, 2])
    h = g.node("Conv", [h, w], f"{name}.conv", kernel_shape=[1, 1])
    h = g.node("Add", [g.node("Mul", [h, a], f"{name}.scale"), b], f"{name}.shift")
    return h, new_parity_exp


def _binarized_unit(
    g: _Graph, rng: np.random.Generator, x: str, c_in: int, c_out: int, stride: int, parity_exp: int, name: str
) -> tuple[str, int]:
    """Add(Mul(Conv(Sign(x), ±s_o), a), b) + shortcut(x); returns it and its parity exponent."""
    scale_exps = rng.integers(0, 5, c_out)  # s_o = 2^-k
    signs = rng.choice([-1.0, 1.0], (c_out, c_in, 3, 3))
    t = round(np.log2(BRANCH_GAIN * np.sqrt(9 * c_in)))
    multipliers = rng.integers(2, 5, c_out)
    w = g.const(f"{name}.weight", signs * 2.0 ** -scale_exps.reshape(-1, 1, 1, 1))
    # Conv = s_o · (even integer), so Conv · a = (even integer) · m · 2^-t
    a = g.const(f"{name}.mul", _per_channel(multipliers * 2.0 ** (scale_exps - t)))
    b = g.const(f"{name}.add", _shift(rng, c_out, SHIFT_RANGE))
    if stride == 1 and c_in == c_out:
        shortcut = x
    else:
        shortcut, parity_exp = _downsample(g, rng, x, c_in, c_out, parity_exp, f"{name}.downsample")
    # the branch (multiple of 2^(1-t)) and b (of 2^-SHIFT_EXP) must be even multiples of 2^-f
    assert max(t, SHIFT_EXP + 1) <= parity_exp, (name, t, parity_exp)
    h = g.node("Sign", [x], f"{name}.sign")
    h = g.node("Conv", [h, w], f"{name}.conv", kernel_shape=[3, 3], strides=[stride] * 2, pads=[1] * 4)
    h = g.node("Add", [g.node("Mul", [h, a], f"{name}.scale"), b], f"{name}.shift")
    return g.node("Add", [h, shortcut], f"{name}.residual"), parity_exp


def build_model(input_size: int = 224, num_classes: int = 1000, seed: int = 0) -> onnx.ModelProto:
    """The Bi-Real ResNet-18 of the module docstring, its weights drawn from numpy's PCG64(seed)."""
    if input_size <= 0 or input_size % 32:
        raise ValueError(f"input size must be a positive multiple of 32, got {input_size}")
    rng = np.random.default_rng(seed)
    g = _Graph()
    x, parity_exp = _stem(g, rng)
    c_in = WIDTHS[0]
    for stage, c_out in enumerate(WIDTHS, start=1):
        for block in range(1, BLOCKS_PER_STAGE + 1):
            for unit in (1, 2):
                stride = 2 if stage > 1 and block == 1 and unit == 1 else 1
                name = f"stage{stage}.block{block}.unit{unit}"
                x, parity_exp = _binarized_unit(g, rng, x, c_in, c_out, stride, parity_exp, name)
                c_in = c_out
    h = g.node("Flatten", [g.node("GlobalAveragePool", [x], "head.pool")], "head.flatten")
    fc_w = g.const("fc.weight", rng.standard_normal((num_classes, c_in)) / np.sqrt(c_in))
    fc_b = g.const("fc.bias", rng.standard_normal(num_classes) * 0.1)
    g.nodes.append(helper.make_node("Gemm", [h, fc_w, fc_b], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        g.nodes,
        "bireal_resnet18",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, input_size, input_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, num_classes])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tvmbits")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def make_input(input_size: int = 224, seed: int = 0) -> np.ndarray:
    """A [1,3,S,S] float32 input: multiples of 2^-INPUT_EXP in [-1, 1], uniformly drawn."""
    n = 2**INPUT_EXP
    levels = np.random.default_rng(seed).integers(-n, n + 1, (1, 3, input_size, input_size))
    return (levels / n).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a binarized Bi-Real ResNet-18 with random weights as ONNX.")
    parser.add_argument("-o", "--output", default="bireal_resnet18.onnx", help="ONNX file to write")
    parser.add_argument("--input-size", type=int, default=224, help="input height and width, a multiple of 32")
    parser.add_argument("--classes", type=int, default=1000, help="number of logits")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    try:
        model = build_model(args.input_size, args.classes, args.seed)
    except ValueError as error:
        parser.error(str(error))
    onnx.save(model, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
