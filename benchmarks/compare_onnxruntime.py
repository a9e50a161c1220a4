"""Time a compiled artifact against ONNX Runtime float32 on the same ONNX file, in one run.

Both run on this machine with every core (ORT intra_op_num_threads = cores, TVM's thread pool
at its default of one thread per core), on the same seeded input, after warm-up runs; the
figure is the median of `--repeat` runs. Also reports how far the outputs are apart.

    python benchmarks/compare_onnxruntime.py model.onnx model.tar [--input x.npy] [--repeat 50]
"""

import argparse
import os
import time

import numpy as np
import onnxruntime as ort

import tvmbits


def time_onnxruntime(path: str, feeds: dict, repeat: int) -> tuple[float, list[np.ndarray]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, feeds)
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), outputs


def time_tvmbits(model: tvmbits.Model, feeds: dict, repeat: int) -> tuple[float, list[np.ndarray]]:
    outputs = list(model(**feeds).values())
    return model.benchmark(repeat, feeds)["median"], outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx")
    parser.add_argument("artifact")
    parser.add_argument("--input", help=".npy input (default: seeded standard normal)")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    model = tvmbits.load(args.artifact)
    meta = model.metadata
    (spec,) = meta["inputs"]
    if args.input:
        x = np.load(args.input)
    else:
        x = np.random.default_rng(0).standard_normal(spec["shape"]).astype(spec["dtype"])
    feeds = {spec["name"]: x}
    ort_ms, ort_out = time_onnxruntime(args.onnx, feeds, args.repeat)
    tvm_ms, tvm_out = time_tvmbits(model, feeds, args.repeat)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(ort_out, tvm_out))
    same_argmax = all(np.array_equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(ort_out, tvm_out))
    print(f"cores: {os.cpu_count()}, median of {args.repeat} runs")
    print(f"ONNX Runtime {ort.__version__} float32: {ort_ms:9.3f} ms")
    print(f"tvmbits ({meta['profile']}):          {tvm_ms:9.3f} ms   ({ort_ms / tvm_ms:.2f}x ONNX Runtime)")
    print(f"max |difference| of outputs: {diff:.3g}; same arg-max: {same_argmax}")


if __name__ == "__main__":
    main()
