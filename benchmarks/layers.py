"""Time tvmbits' low-bit convolutions against ONNX Runtime float32 and int8 on ResNet-18's 3×3
conv layers (batch 1, 224×224 input), all in one run on this machine.

Each layer is a one-conv ONNX model: float32 `Conv` for ONNX Runtime float32, `QLinearConv`
(uint8 activations, int8 per-tensor weights) for ONNX Runtime int8, and for tvmbits
- W1A1: `Sign → Conv(±1 weights)`, compiled as a binarized layer;
- WwAa: `Relu → Conv(float weights)` compiled with `--wbits w --abits a --all-layers`
  (unsigned a-bit activations, signed/bipolar w-bit weights).
tvmbits' time includes quantizing and packing the layer's float input and its float epilogue;
the W1A1 kernel's own time (per-kernel profile) is a column of its own.
Every contender uses all cores; each number is the best of `--rounds` medians of `--repeat` runs
(after warm-up), the contenders of a layer timed in turn in every round (`interleaved`).

It also builds `popcount_peak.c` (this machine's XOR+popcount peak in bit-MACs/s, by scalar,
AVX2 and AVX-512 loops over L1-resident words, a scalar+vector mix, and AVX-512 on registers
alone) and `dot_peak.c` (the AVX512-VNNI byte dot-product peak in MACs/s, where the CPU has it)
and runs both `PEAK_RUNS` times in every round of every layer, in turn with the contenders, so
that a kernel's fraction of the peak compares numbers taken under the same drift of this
machine's speed: the W1A1 conv kernel alone (its time from the per-kernel profile, packing
excluded) against the best popcount loop of its layer's rounds, the W4A4 kernel alone against
VNNI's.
Writes `layers.md` and `layers.png` into `--out`.

    python benchmarks/layers.py [--repeat 50] [--rounds 5] [--layers 0,2] [--out benchmarks/results]
"""

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import tvm
from onnx import TensorProto, helper, numpy_helper

import tvmbits
from tvmbits.tuning_log import cpu_model

# (input size, in channels, out channels, stride) of ResNet-18's distinct 3×3 convs
LAYERS = [
    (56, 64, 64, 1),
    (56, 64, 128, 2),
    (28, 128, 128, 1),
    (28, 128, 256, 2),
    (14, 256, 256, 1),
    (14, 256, 512, 2),
    (7, 512, 512, 1),
]
BITS = [(1, 1), (1, 2), (2, 2), (4, 4)]  # (weight bits, activation bits)
PEAK_RUNS = 3  # runs of each peak microbenchmark a round (a run of dot_peak.c lasts about 0.1 s)
QUIET = 0.2  # s of rest before each contender's turn (`interleaved`)
# rounds of timing every contender in turn, 5: a layer's contenders take a few seconds a round,
# and on this machine kind a slow spell can last through 3 rounds (a kernel read 47% of the peak
# in one run, 79% in the one before)
ROUNDS = 5


def macs(layer) -> int:
    size, cin, cout, stride = layer
    out = (size + 2 - 3) // stride + 1
    return out * out * cout * cin * 9


def _model(nodes, inits, layer, x_type, y_type, opset=17) -> onnx.ModelProto:
    size, cin, cout, stride = layer
    out = (size + 2 - 3) // stride + 1

    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("input", x_type, [1, cin, size, size])],
        [helper.make_tensor_value_info("output", y_type, [1, cout, out, out])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def float_conv(layer, rng, pre=None) -> onnx.ModelProto:
    size, cin, cout, stride = layer
    weight = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    if pre == "Sign":
        weight = np.sign(weight) + (weight == 0)
    nodes, data = [], "input"
    if pre:
        nodes.append(helper.make_node(pre, ["input"], ["pre"]))
        data = "pre"
    nodes.append(helper.make_node("Conv", [data, "w"], ["output"], pads=[1] * 4, strides=[stride] * 2))
    return _model(nodes, {"w": weight}, layer, TensorProto.FLOAT, TensorProto.FLOAT)


def int8_conv(layer, rng) -> onnx.ModelProto:
    size, cin, cout, stride = layer
    inits = {
        "xs": np.float32(0.05), "xz": np.uint8(0),
        "w": rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8),
        "ws": np.float32(0.01), "wz": np.int8(0),
        "ys": np.float32(0.5), "yz": np.uint8(0),
    }
    node = helper.make_node(
        "QLinearConv", ["input", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["output"],
        pads=[1] * 4, strides=[stride] * 2,
    )
    return _model([node], inits, layer, TensorProto.UINT8, TensorProto.UINT8)


def ort_timer(model: onnx.ModelProto, x: np.ndarray, repeat: int) -> Callable[[], float]:
    """A function that times ONNX Runtime (all cores) on `model` and returns the median ms of
    `repeat` runs; the session is made, and warmed up, once."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, {"input": x})

    def median() -> float:
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            session.run(None, {"input": x})
            times.append(time.perf_counter() - start)
        return float(np.median(times)) * 1e3

    return median


def interleaved(timers: dict[str, Callable[[], float]], rounds: int,
                each_round: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Each timer's best result over `rounds` rounds, every round running all the timers in
    turn, then `each_round`, each after `QUIET` s of rest. This machine kind's speed drifts by up
    to 2x over minutes (other tenants of the host): contenders timed in turn, several times, see
    the same drift, so their ratios hold. The rest lets the previous contender's thread pool go
    to sleep (ONNX Runtime's and TVM's workers spin a while after a run): a tvmbits kernel timed
    right after an ONNX Runtime run took 5–8% longer than after a rest."""
    best = {name: float("inf") for name in timers}
    for _ in range(rounds):
        for name, timer in timers.items():
            time.sleep(QUIET)
            best[name] = min(best[name], timer())
        time.sleep(QUIET)
        each_round()
    return best


def tvmbits_timers(model: onnx.ModelProto, x: np.ndarray, repeat: int, wbits=None, abits=None
                   ) -> tuple[Callable[[], float], Callable[[], float], dict]:
    """(layer timer, conv kernel alone timer, layer plan) of the compiled one-layer model; the
    timers return median ms (the kernel's from the per-kernel profile)."""
    compiled = tvmbits.load(tvmbits.compile(model, "x86_64", wbits=wbits, abits=abits, all_layers=wbits is not None))

    def layer() -> float:
        return compiled.benchmark(repeat, {"input": x})["median"]

    def kernel() -> float:
        return next(row["ms"] for row in compiled.profile({"input": x}, runs=repeat) if "_conv2d" in row["name"])

    return layer, kernel, compiled.metadata["layers"][0]


class Peak:
    """The microbenchmark `source_name`, built into `folder` once; calling it runs it once and
    returns G (bit-)MACs/s of each of its loops on this machine, all cores."""

    def __init__(self, source_name: str, folder: str):
        self.binary = f"{folder}/{Path(source_name).stem}"
        source = Path(__file__).with_name(source_name)
        subprocess.run(["cc", "-O3", "-march=native", "-fopenmp", str(source), "-o", self.binary], check=True)

    def __call__(self) -> dict[str, float]:
        lines = subprocess.run([self.binary], check=True, capture_output=True, text=True).stdout.splitlines()
        return {name: float(value) for name, value, *_ in (line.split() for line in lines)}


def _keep_best(best: dict[str, float], rates: dict[str, float]) -> None:
    """Each loop's best rate in `best` (a peak is what the machine can do, and a run can be disturbed)."""
    for loop, rate in rates.items():
        best[loop] = max(rate, best.get(loop, 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--layers", help="comma-separated indices into LAYERS (default: all)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds of timing every contender in turn (best kept)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    picked = [LAYERS[int(i)] for i in args.layers.split(",")] if args.layers else LAYERS
    with tempfile.TemporaryDirectory() as tmp:
        rows, popcount, dot = _run(picked, args, tmp)
    print("popcount peak, G bit-MACs/s: " + ", ".join(f"{k} {v:.0f}" for k, v in popcount.items())
          + "; byte dot-product peak, G MACs/s: " + ", ".join(f"{k} {v:.0f}" for k, v in dot.items()), flush=True)
    path = write_report(args.out, "layers.md", _report(rows, args.repeat, args.rounds, popcount, dot))
    _plot(rows, path.with_name("layers.png"))
    print(f"wrote {path} and {path.with_name('layers.png')}")


def _run(picked, args, tmp: str) -> tuple[list[dict], dict[str, float], dict[str, float]]:
    """Time every layer of `picked`: (the rows, the best peaks of the whole run: popcount, dot)."""
    rng = np.random.default_rng(0)
    peaks = {"popcount": Peak("popcount_peak.c", tmp), "dot": Peak("dot_peak.c", tmp)}
    rows, whole = [], {name: {} for name in peaks}
    for layer in picked:
        size, cin, cout, stride = layer
        x = rng.standard_normal((1, cin, size, size)).astype(np.float32)
        row = {"layer": layer, "macs": macs(layer)}
        timers = {
            "ort_fp32": ort_timer(float_conv(layer, rng), x, args.repeat),
            "ort_int8": ort_timer(int8_conv(layer, rng), rng.integers(0, 256, x.shape).astype(np.uint8), args.repeat),
        }
        for wbits, abits in BITS:
            key = f"W{wbits}A{abits}"
            if (wbits, abits) == (1, 1):
                layer_timer, kernel_timer, plan = tvmbits_timers(float_conv(layer, rng, "Sign"), x, args.repeat)
            else:
                layer_timer, kernel_timer, plan = tvmbits_timers(
                    float_conv(layer, rng, "Relu"), x, args.repeat, wbits, abits)
            assert plan["kernel"] != "float", plan
            timers[key], timers[f"{key}_kernel_ms"] = layer_timer, kernel_timer
            row[f"{key}_bytes"] = plan["weight_bytes_packed"]
            row[f"{key}_kernel"] = plan["kernel"]
        best = {name: {} for name in peaks}  # over this layer's rounds

        def each_round():
            for name, peak in peaks.items():
                for _ in range(PEAK_RUNS):
                    _keep_best(best[name], peak())

        row.update(interleaved(timers, args.rounds, each_round))
        row["popcount_peak"], row["dot_peak"] = max(best["popcount"].values()), best["dot"].get("vnni")
        for name in peaks:
            _keep_best(whole[name], best[name])
        row["W1A1_kernel_gbitmacs"] = row["macs"] / row["W1A1_kernel_ms"] / 1e6
        for wbits, abits in BITS[1:]:
            row[f"W{wbits}A{abits}_kernel_gmacs"] = row["macs"] / row[f"W{wbits}A{abits}_kernel_ms"] / 1e6
        row["fp32_bytes"] = cout * cin * 9 * 4
        rows.append(row)
        print(_line(row), flush=True)
    return rows, whole["popcount"], whole["dot"]


def write_report(folder: str, name: str, report: str) -> Path:
    """Print `report` and write it to `folder`/`name`, making the folder; returns that path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(report)
    print(report)
    return out / name


def _line(row) -> str:
    size, cin, cout, stride = row["layer"]
    cells = [f"{size}x{size}x{cin}->{cout}/s{stride}", f"fp32 {row['ort_fp32']:.3f}", f"int8 {row['ort_int8']:.3f}"]
    cells += [f"W{w}A{a} {row[f'W{w}A{a}']:.3f}" for w, a in BITS]
    return " | ".join(cells) + " ms"


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = [f"{r['layer'][0]}², {r['layer'][1]}→{r['layer'][2]}" for r in rows]
    series = [("ORT fp32", "ort_fp32"), ("ORT int8", "ort_int8")] + [(f"W{w}A{a}", f"W{w}A{a}") for w, a in BITS]
    series.insert(3, ("W1A1 kernel alone", "W1A1_kernel_ms"))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, (label, key) in enumerate(series):
        ax.bar([j + i * width for j in range(len(rows))], [r[key] for r in rows], width, label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], names, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log scale), batch 1")
    ax.set_title(f"ResNet-18 3×3 conv layers on {cpu_model()}, {os.cpu_count()} cores")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _report(rows, repeat, rounds, peak, dot) -> str:
    cpu = cpu_model()
    lines = [
        "# ResNet-18 3×3 conv layers: tvmbits vs ONNX Runtime",
        "",
        f"CPU: {cpu}, {os.cpu_count()} cores; tvmbits {tvmbits.__version__} on TVM {tvm.__version__}, "
        f"ONNX Runtime {ort.__version__}; batch 1, ms: the best of {rounds} rounds' medians of {repeat} runs, "
        "the contenders timed in turn in each round. "
        "Speed-ups are ONNX Runtime's time / tvmbits' time on the same layer in the same run.",
        "",
        "| layer | MMACs | ORT fp32 | ORT int8 | " + " | ".join(f"W{w}A{a}" for w, a in BITS)
        + " | W1A1 kernel | W1A1 vs fp32 | W1A1 vs int8 | W1A2 vs int8 | W2A2 vs int8 | W4A4 vs int8 |",
        "|---" * (4 + len(BITS) + 6) + "|",
    ]
    for row in rows:
        size, cin, cout, stride = row["layer"]
        cells = [f"{size}×{size}, {cin}→{cout}, s{stride}", f"{row['macs'] / 1e6:.0f}",
                 f"{row['ort_fp32']:.3f}", f"{row['ort_int8']:.3f}"]
        cells += [f"{row[f'W{w}A{a}']:.3f}" for w, a in BITS]
        cells += [f"{row['W1A1_kernel_ms']:.3f} ({row['W1A1_kernel_ms'] / row['W1A1']:.0%})"]
        cells += [f"{row['ort_fp32'] / row['W1A1']:.2f}×"]
        cells += [f"{row['ort_int8'] / row[k]:.2f}×" for k in ("W1A1", "W1A2", "W2A2", "W4A4")]
        lines.append("| " + " | ".join(cells) + " |")

    def geomean(key, base):
        return float(np.exp(np.mean([np.log(r[base] / r[key]) for r in rows])))

    lines += [
        "",
        f"Geometric means: W1A1 {geomean('W1A1', 'ort_fp32'):.2f}× ORT fp32 and "
        f"{geomean('W1A1', 'ort_int8'):.2f}× ORT int8 (its kernel alone: "
        f"{geomean('W1A1_kernel_ms', 'ort_int8'):.2f}× ORT int8); "
        f"W1A2 {geomean('W1A2', 'ort_int8'):.2f}× ORT int8; W2A2 {geomean('W2A2', 'ort_int8'):.2f}× ORT int8; "
        f"W4A4 {geomean('W4A4', 'ort_int8'):.2f}× ORT int8.",
        "Kernels (`auto` for this CPU): "
        + ", ".join(f"W{w}A{a} {rows[0][f'W{w}A{a}_kernel']}" for w, a in BITS)
        + ".",
        "W1A1 kernel: the conv kernel alone (ms, its share of the layer); the rest of the layer "
        "is binarizing and packing the float NCHW input and the layout transpose back to NCHW.",
        "",
        "Popcount peak of this machine (`popcount_peak.c`, all cores, G bit-MACs/s, the best run of the "
        "whole benchmark): " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items())
        + ". W1A1 conv kernel alone (packing excluded), G bit-MACs/s and fraction of the best popcount "
        "loop measured in the same rounds (in brackets): "
        + ", ".join(
            f"{r['layer'][0]}²×{r['layer'][1]}→{r['layer'][2]} {r['W1A1_kernel_gbitmacs']:.0f} "
            f"({r['W1A1_kernel_gbitmacs'] / r['popcount_peak']:.0%} of {r['popcount_peak']:.0f})"
            for r in rows
        )
        + ".",
        "",
        _dot_line(rows, dot),
        "",
        "Weight bytes over all layers: "
        f"fp32 {sum(r['fp32_bytes'] for r in rows)}, int8 {sum(r['fp32_bytes'] for r in rows) // 4}, "
        + ", ".join(f"W{w}A{a} {sum(r[f'W{w}A{a}_bytes'] for r in rows)}" for w, a in BITS)
        + ".",
        "",
    ]
    return "\n".join(lines)


def _dot_line(rows, dot) -> str:
    """The W4A4 kernels alone against the byte dot-product peak (`dot_peak.c`) measured in the
    same rounds, if the CPU has AVX512-VNNI."""
    kernels = ", ".join(
        f"{r['layer'][0]}²×{r['layer'][1]}→{r['layer'][2]} {r['W4A4_kernel_gmacs']:.0f}"
        + (f" ({r['W4A4_kernel_gmacs'] / r['dot_peak']:.0%} of {r['dot_peak']:.0f})" if r["dot_peak"] else "")
        for r in rows
    )
    if not dot:
        return f"No AVX512-VNNI on this CPU. W4A4 conv kernel alone, G MACs/s: {kernels}."
    return (f"Byte dot-product peak of this machine (`dot_peak.c`, AVX512-VNNI, all cores, the best run of the "
            f"whole benchmark): {dot['vnni']:.0f} G MACs/s. W4A4 conv kernel alone (input packing excluded), "
            f"G MACs/s and fraction of the peak measured in the same rounds: {kernels}.")


if __name__ == "__main__":
    main()
