"""Time the whole binarized ResNet-18 example compiled by tvmbits against ONNX Runtime running a
float32 ResNet-18 and its int8 (QDQ) quantization, all on this machine in one run.

The float ResNet-18 is the standard architecture (7×7/2 stem, max pool, 4 stages of 2 basic
blocks, 1×1/2 projection shortcuts, batch norm folded into conv biases, global average pool,
1000-way Gemm) with seeded random weights; the int8 model is ONNX Runtime's `quantize_static`
(QDQ, per-channel int8 weights, uint8 activations) of it, calibrated on 8 random inputs. The
binarized model is `examples/bireal_resnet18.py` (float stem, downsample convs and classifier,
16 binarized 3×3 convs). Every contender uses all cores; each time is the best of `--rounds`
medians of `--repeat` runs, the three timed in turn in every round (`layers.interleaved`). tvmbits' own
per-kernel profile is split by phase: low-bit kernels, packing, layout transposes, float layers.

    python benchmarks/resnet18.py [--repeat 30] [--rounds 3] [--out benchmarks/results]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tvm
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

import tvmbits
from layers import interleaved, ort_timer, write_report
from tvmbits.tuning_log import cpu_model

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from bireal_resnet18 import build_model, make_input  # noqa: E402

WIDTHS = (64, 128, 256, 512)
# where the time of a compiled model goes, from its kernels' names (first match wins)
PHASES = [
    ("low-bit kernels (epilogues and the next layer's packing fused in)", ("bitserial_conv2d", "bitserial_dense", "subbyte_conv2d", "subbyte_dense")),
    ("packing on its own (binarize/quantize, bit or byte packing, window sums)", ("bitpack", "subbyte_pack", "bitserial_offset")),
    ("layout (transposes)", ("transpose",)),
    ("float layers and elementwise ops", ("",)),
]


def phases(rows: list[dict]) -> list[tuple[str, float, list[str]]]:
    """(phase, ms, its three largest kernels) of a per-kernel profile (`Model.profile`)."""
    split = {name: [] for name, _ in PHASES}
    for row in rows:
        phase = next(name for name, fragments in PHASES if any(f in row["name"] for f in fragments))
        split[phase].append(row)
    return [
        (name, sum(r["ms"] for r in members),
         [f"{r['name']} {r['ms']:.3f}" for r in sorted(members, key=lambda r: -r["ms"])[:3]])
        for name, members in split.items()
    ]


def float_resnet18(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x, cin, cout, k, stride, name, relu=True):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}.w"))
        inits.append(numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}.b"))
        nodes.append(helper.make_node(
            "Conv", [x, f"{name}.w", f"{name}.b"], [name], strides=[stride] * 2, pads=[k // 2] * 4, name=name
        ))
        if not relu:
            return name
        nodes.append(helper.make_node("Relu", [name], [f"{name}.relu"]))
        return f"{name}.relu"

    x = conv("input", 3, 64, 7, 2, "stem")
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    x, cin = "pool", 64
    for stage, cout in enumerate(WIDTHS, start=1):
        for block in (1, 2):
            stride = 2 if stage > 1 and block == 1 else 1
            name = f"s{stage}b{block}"
            h = conv(x, cin, cout, 3, stride, f"{name}.c1")
            h = conv(h, cout, cout, 3, 1, f"{name}.c2", relu=False)
            shortcut = x if stride == 1 and cin == cout else conv(x, cin, cout, 1, stride, f"{name}.down", relu=False)
            nodes.append(helper.make_node("Add", [h, shortcut], [f"{name}.add"]))
            nodes.append(helper.make_node("Relu", [f"{name}.add"], [f"{name}.out"]))
            x, cin = f"{name}.out", cout
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(numpy_helper.from_array((rng.standard_normal((1000, 512)) / np.sqrt(512)).astype(np.float32), "fc.w"))
    inits.append(numpy_helper.from_array(np.zeros(1000, np.float32), "fc.b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes, "resnet18",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class _RandomInputs(CalibrationDataReader):
    def __init__(self, count: int):
        self.samples = iter([{"input": make_input(224, seed=100 + i)} for i in range(count)])

    def get_next(self):
        return next(self.samples, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of timing every contender in turn (best kept)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    x = make_input(224, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path, int8_path = f"{tmp}/resnet18.onnx", f"{tmp}/resnet18_int8.onnx"
        fp32 = float_resnet18()
        onnx.save(fp32, fp32_path)
        quantize_static(
            fp32_path, int8_path, _RandomInputs(8), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
        onnx.save(build_model(224), f"{tmp}/bireal.onnx")
        compiled = tvmbits.load(tvmbits.compile(f"{tmp}/bireal.onnx", "x86_64"))
        meta = compiled.metadata
        timed = interleaved({
            "ort_fp32": ort_timer(fp32, x, args.repeat),
            "ort_int8": ort_timer(onnx.load(int8_path), x, args.repeat),
            "ours": lambda: compiled.benchmark(args.repeat, {"input": x})["median"],
        }, args.rounds)
        ort_fp32, ort_int8, ours = timed["ort_fp32"], timed["ort_int8"], timed["ours"]
        split = phases(compiled.profile({"input": x}, runs=args.repeat))
    lowbit = [layer for layer in meta["layers"] if layer["kernel"] != "float"]
    float_bytes = sum(layer["weight_bytes_float"] for layer in lowbit)
    packed_bytes = sum(layer["weight_bytes_packed"] for layer in lowbit)
    report = "\n".join([
        "# Whole ResNet-18 (batch 1, 224×224): tvmbits binarized vs ONNX Runtime",
        "",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; tvmbits {tvmbits.__version__} on TVM {tvm.__version__}, "
        f"ONNX Runtime {ort.__version__}; the best of {args.rounds} rounds' medians of {args.repeat} runs, "
        "the three models timed in turn in each round.",
        "",
        "| model | ms | tvmbits speed-up |",
        "|---|---|---|",
        f"| ONNX Runtime float32 ResNet-18 | {ort_fp32:.2f} | {ort_fp32 / ours:.2f}× |",
        f"| ONNX Runtime int8 (QDQ) ResNet-18 | {ort_int8:.2f} | {ort_int8 / ours:.2f}× |",
        f"| tvmbits binarized ResNet-18 (x86_64) | {ours:.2f} | 1× |",
        "",
        f"Weights of the {len(lowbit)} binarized layers: {float_bytes} B as float32, {packed_bytes} B packed "
        f"({float_bytes / packed_bytes:.1f}× fewer).",
        "",
        "Where tvmbits' time goes (`Model.profile`, medians per kernel summed by phase; the kernels "
        "run one after another, so the phases add up to about the whole run):",
        "",
        "| phase | ms | share | largest kernels (ms) |",
        "|---|---|---|---|",
        *(f"| {name} | {ms:.3f} | {ms / max(sum(m for _, m, _ in split), 1e-9):.0%} | {'; '.join(top)} |"
          for name, ms, top in split),
        "",
    ])
    print(f"wrote {write_report(args.out, 'resnet18.md', report)}")


if __name__ == "__main__":
    main()
