"""Time the layers a binarized ResNet-18 keeps in float32 (`examples/bireal_resnet18.py`):
the 7×7/2 stem with its folded batch norm, the 3×3/2 max pool, the three 1×1 projection
shortcuts (after their 2×2 average pool) and the 512→1000 classifier, compiled by tvmbits and
run by ONNX Runtime float32 on the same one-layer ONNX models, all in one run on this machine.

tvmbits compiles each model for `host` and takes NCHW in and out like the ONNX model, so its
whole-model time includes the layout transposes at the model's edges, which inside a network
(NHWC throughout) do not exist; the `kernel` column is the layer's own fused kernel from the
per-kernel profile, without those transposes. Every contender uses all cores; each time is the
best of `--rounds` medians of `--repeat` runs, a layer's contenders timed in turn in every round.

    python benchmarks/float_layers.py [--repeat 50] [--rounds 5] [--out benchmarks/results]
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import tvmbits
from layers import ROUNDS, interleaved, ort_timer, write_report
from tvmbits.tuning_log import cpu_model


def _model(name, nodes, inits, in_shape, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def stem(rng) -> tuple[str, onnx.ModelProto, list[int], int]:
    inits = {
        "w": rng.standard_normal((64, 3, 7, 7)).astype(np.float32),
        "a": rng.uniform(0.5, 1.5, (1, 64, 1, 1)).astype(np.float32),
        "b": rng.uniform(-1, 1, (1, 64, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[7, 7], pads=[3] * 4, strides=[2, 2]),
        helper.make_node("Mul", ["c", "a"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["output"]),
    ]
    shape = [1, 3, 224, 224]
    return "stem conv 7×7/2, 3→64, 224² + batch norm", _model("stem", nodes, inits, shape, [1, 64, 112, 112]), shape, \
        112 * 112 * 64 * 3 * 49


def max_pool() -> tuple[str, onnx.ModelProto, list[int], int]:
    node = helper.make_node("MaxPool", ["input"], ["output"], kernel_shape=[3, 3], pads=[1] * 4, strides=[2, 2])
    shape = [1, 64, 112, 112]
    return "max pool 3×3/2, 64, 112²", _model("pool", [node], {}, shape, [1, 64, 56, 56]), shape, 0


def projection(rng, size: int, cin: int) -> tuple[str, onnx.ModelProto, list[int], int]:
    cout, out = 2 * cin, size // 2
    inits = {
        "w": rng.standard_normal((cout, cin, 1, 1)).astype(np.float32),
        "a": rng.uniform(0.5, 1.5, (1, cout, 1, 1)).astype(np.float32),
        "b": rng.uniform(-1, 1, (1, cout, 1, 1)).astype(np.float32),
    }
    nodes = [
        helper.make_node("AveragePool", ["input"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w"], ["c"]),
        helper.make_node("Mul", ["c", "a"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["output"]),
    ]
    shape = [1, cin, size, size]
    return f"projection avgpool 2×2/2 + 1×1, {cin}→{cout}, {size}²", \
        _model("projection", nodes, inits, shape, [1, cout, out, out]), shape, out * out * cout * cin


def classifier(rng) -> tuple[str, onnx.ModelProto, list[int], int]:
    inits = {
        "w": rng.standard_normal((1000, 512)).astype(np.float32),
        "b": rng.standard_normal(1000).astype(np.float32),
    }
    node = helper.make_node("Gemm", ["input", "w", "b"], ["output"], transB=1)
    return "classifier Gemm 512→1000", _model("classifier", [node], inits, [1, 512], [1, 1000]), [1, 512], 512 * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of timing every contender in turn (best kept)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    layers = [stem(rng), max_pool(), *(projection(rng, size, cin) for size, cin in ((56, 64), (28, 128), (14, 256))),
              classifier(rng)]
    rows = []
    for name, model, shape, macs in layers:
        x = rng.standard_normal(shape).astype(np.float32)
        compiled = tvmbits.load(tvmbits.compile(model, "host"))

        def kernel_ms() -> float:
            rows = compiled.profile({"input": x}, runs=args.repeat)
            return sum(row["ms"] for row in rows if "transpose" not in row["name"])

        timed = interleaved({
            "ort": ort_timer(model, x, args.repeat),
            "whole": lambda: compiled.benchmark(args.repeat, {"input": x})["median"],
            "kernel": kernel_ms,
        }, args.rounds)
        ort_ms, whole, kernel = timed["ort"], timed["whole"], timed["kernel"]
        gflops = f"{2 * macs / kernel / 1e6:.0f}" if macs else "–"
        rows.append(f"| {name} | {ort_ms:.3f} | {whole:.3f} | {kernel:.3f} | {gflops} | {ort_ms / kernel:.2f}× |")
        print(rows[-1], file=sys.stderr, flush=True)
    write_report(args.out, "float_layers.md", "\n".join([
        "# The float layers of a binarized ResNet-18: tvmbits vs ONNX Runtime float32",
        "",
        f"CPU: {cpu_model()}; tvmbits {tvmbits.__version__}; best of {args.rounds} rounds' medians of "
        f"{args.repeat} runs. `kernel`: the "
        "layer's fused kernels from tvmbits' per-kernel profile, without the NCHW↔NHWC transposes at the "
        "one-layer model's edges (a network keeps NHWC throughout).",
        "",
        "| layer | ONNX Runtime fp32 ms | tvmbits model ms | tvmbits kernel ms | kernel GFLOP/s | ORT ÷ kernel |",
        "|---|---|---|---|---|---|",
        *rows,
    ]) + "\n")


if __name__ == "__main__":
    main()
