"""A binarized CNN trained with Brevitas on scikit-learn's bundled digits, compiled by tvmbits.

    python examples/digits_bnn.py [--epochs 30] [--seed 0] [--out-dir build/digits_bnn] [--repeat 200]

Data: `sklearn.datasets.load_digits` (1797 8×8 grey images of 0-9, values 0..16, shipped with
scikit-learn: no download), scaled to [-1, 1], split 80/20 with a fixed seed.

Network (Brevitas, straight-through estimators), input [1, 1, 8, 8]::

    QuantIdentity 4-bit signed (the input)
    QuantConv2d 1→32 3×3 pad 1, binary weights ±0.1 → BatchNorm → binary activation (±1)
    QuantConv2d 32→64 3×3 pad 1, binary weights → BatchNorm → MaxPool 2 → binary activation
    QuantConv2d 64→64 3×3 pad 1, binary weights → BatchNorm → MaxPool 2 → binary activation
    Flatten → QuantLinear 256→10, binary weights, float bias → logits

Trained with Adam for `--epochs` epochs (seeded, one torch thread, about 30 s here), exported with
Brevitas' `export_qonnx`, compiled by tvmbits for this machine (`host`, run here) and arm64 (cross-compiled,
not run). Prints the test accuracy of Brevitas' PyTorch forward and of the compiled host
module on the same images and how many predictions agree, the weight bytes of the low-bit
layers as float32 and as packed, and the median latency of the compiled module against ONNX
Runtime. ONNX Runtime has no QONNX ops, so it runs the exported model with its
Quant/BipolarQuant nodes rewritten into standard ONNX by `tvmbits.frontend.qonnx` (the same
float values; saved as digits_bnn_standard.onnx). Both use every core, the same input, warm-up
runs first, batch 1.
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import brevitas.nn as qnn
from brevitas import quant
from brevitas.export import export_qonnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import tvmbits
from tvmbits.frontend import qonnx as qonnx_frontend

SHAPE = (1, 1, 8, 8)


def data(seed: int):
    """(x_train, x_test, y_train, y_test): float32 NCHW images in [-1, 1], int64 labels."""
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]
    return train_test_split(x, digits.target.astype(np.int64), test_size=0.2, random_state=seed)


def network() -> nn.Sequential:
    binary_act = dict(act_quant=quant.SignedBinaryActPerTensorConst, return_quant_tensor=True)
    binary_weight = dict(weight_quant=quant.SignedBinaryWeightPerTensorConst, bias=False)
    return nn.Sequential(
        qnn.QuantIdentity(bit_width=4, return_quant_tensor=True),
        qnn.QuantConv2d(1, 32, 3, padding=1, **binary_weight),
        nn.BatchNorm2d(32),
        qnn.QuantIdentity(**binary_act),
        qnn.QuantConv2d(32, 64, 3, padding=1, **binary_weight),
        nn.BatchNorm2d(64),
        nn.MaxPool2d(2),
        qnn.QuantIdentity(**binary_act),
        qnn.QuantConv2d(64, 64, 3, padding=1, **binary_weight),
        nn.BatchNorm2d(64),
        nn.MaxPool2d(2),
        qnn.QuantIdentity(**binary_act),
        nn.Flatten(),
        qnn.QuantLinear(64 * 2 * 2, 10, weight_quant=quant.SignedBinaryWeightPerTensorConst, bias=True),
    )


def train(epochs: int, seed: int) -> tuple[nn.Sequential, tuple]:
    # one thread: on batches this small torch's thread pool costs more than it gains (and
    # thrashes when the machine is shared); it also keeps training bit-reproducible
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    split = data(seed)
    x_train, _, y_train, _ = split
    net = network()
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    loss_fn = nn.CrossEntropyLoss()
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            loss_fn(net(x[batch]), y[batch]).backward()
            optimizer.step()
        schedule.step()
    return net.eval(), split


def torch_logits(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def compiled_logits(model: tvmbits.Model, x: np.ndarray) -> np.ndarray:
    return np.concatenate([next(iter(model(input=image[None]).values())) for image in x])


def time_onnxruntime(path: Path, x: np.ndarray, repeat: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(10):
        session.run(None, {"input": x})
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, {"input": x})
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="build/digits_bnn", help="where the .onnx and .tar files go")
    parser.add_argument("--repeat", type=int, default=200, help="timed runs per contender")
    args = parser.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    net, (_, x_test, _, y_test) = train(args.epochs, args.seed)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.1f} s")
    qonnx_path = out / "digits_bnn.onnx"
    export_qonnx(net, torch.zeros(SHAPE), str(qonnx_path), input_names=["input"])

    compiled = tvmbits.compile(qonnx_path, "host")  # this CPU
    compiled.save(out / "digits_bnn_host.tar")
    meta = compiled.metadata
    arm = tvmbits.compile(qonnx_path, "arm64")
    arm.save(out / "digits_bnn_arm64.tar")
    for layer in meta["layers"]:
        print(f"  {layer['name']:<16} {layer['kernel']:<9} activation {layer['activation']}, weight {layer['weight']}")
    print(f"arm64 build: {(out / 'digits_bnn_arm64.tar').stat().st_size} bytes, "
          f"kernels {[layer['kernel'] for layer in arm.metadata['layers']]} (cross-compiled, not run here)")

    model = tvmbits.load(out / "digits_bnn_host.tar")
    by_torch = torch_logits(net, x_test).argmax(1)
    by_tvmbits = compiled_logits(model, x_test).argmax(1)
    print(f"test accuracy ({len(y_test)} images): PyTorch (Brevitas) {np.mean(by_torch == y_test):.2%}, "
          f"tvmbits {meta['arch']} {np.mean(by_tvmbits == y_test):.2%}; "
          f"same prediction on {np.sum(by_torch == by_tvmbits)}/{len(y_test)}")

    lowbit = [layer for layer in meta["layers"] if layer["kernel"] != "float"]
    as_float = sum(layer["weight_bytes_float"] for layer in lowbit)
    packed = sum(layer["weight_bytes_packed"] for layer in lowbit)
    print(f"weights of the {len(lowbit)} low-bit layers (of {len(meta['layers'])}): {as_float} bytes as float32, "
          f"{packed} bytes packed ({as_float / packed:.1f}x smaller)")

    standard, _ = qonnx_frontend.rewrite(onnx.load(qonnx_path), str(qonnx_path))
    # torch's exporter also lists the initializers as graph inputs, which keeps ONNX Runtime
    # from treating them as constants: drop them from the inputs so that it can optimize
    constants = {init.name for init in standard.graph.initializer}
    inputs = [value for value in standard.graph.input if value.name not in constants]
    del standard.graph.input[:]
    standard.graph.input.extend(inputs)
    standard_path = out / "digits_bnn_standard.onnx"
    onnx.save(standard, standard_path)
    x = x_test[:1]
    ort_ms = time_onnxruntime(standard_path, x, args.repeat)
    tvm_ms = model.benchmark(repeat=args.repeat, inputs={"input": x})["median"]
    print(f"latency, batch 1, median of {args.repeat}, {os.cpu_count()} threads: tvmbits {tvm_ms:.4f} ms, "
          f"ONNX Runtime {ort.__version__} (Quant ops as standard ONNX) {ort_ms:.4f} ms; "
          f"tvmbits speed-up {ort_ms / tvm_ms:.2f}x")
    model.close()


if __name__ == "__main__":
    main()
