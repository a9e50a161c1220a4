"""tvmbits on an NVIDIA GPU, in one run: the 1-bit tensor-core peak, a binary GEMM, ResNet-18's 3×3
convs binarized and the binarized ResNet-18 example, against PyTorch fp16 (and int8 where
PyTorch has it on CUDA: `torch._int_mm` for the GEMM; it has no int8 conv).

- 1-bit tensor-core peak: a TIR kernel that issues only `mma.sync.aligned.m8n8k128 ... b1
  ... and.popc` on registers (8 independent chains per warp, 4 warps per block, 8 blocks per
  SM), in bit-MACs/s (one bit-MAC: one 1-bit multiply-accumulate; one MMA is 8·8·128);
- binary GEMM M = N = K = 4096 bits: tvmbits' GEMM form (`ops/bitserial_gemm.py`, bipolar,
  on packed operands, its per-row term given) with the default CUDA schedule, in bit-MACs/s and
  as a fraction of the measured peak; PyTorch fp16 `matmul` and int8 `_int_mm` of the same
  size for scale;
- ResNet-18's distinct 3×3 convs (batch 1 and 64): one-conv models `Sign → Conv(±1)` compiled
  for `cuda`, the layer (binarize, pack, kernel, epilogue) and the kernel alone, against
  PyTorch fp16 `conv2d` (cuDNN, channels-last);
- the binarized ResNet-18 example (`examples/bireal_resnet18.py`, 224×224) at batch 1 and 64
  against a float ResNet-18 of the same shapes in PyTorch fp16.
Times are medians of `--repeat` runs after warm-up, on the GPU (TVM's time evaluator; CUDA
events for PyTorch). Writes `cuda.md` into `--out`. Needs a CUDA GPU; without one it says so
and exits with status 2.

    python benchmarks/cuda.py [--repeat 50] [--out benchmarks/results]
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import tvm
from tvm import te
from tvm.s_tir import dlight
from tvm.script import tirx as T

import tvmbits
from tvmbits.ops.bitserial_gemm import bitserial_dense_gemm
from tvmbits.ops.encoding import Encoding
from tvmbits.runtime import _register_cuda_compiler
from tvmbits.schedules import default_rules

HERE = Path(__file__).resolve().parent
# this file's name shadows the `cuda` package (cuda-bindings: NVRTC, which loading a CUDA library
# uses) for as long as its folder is on sys.path, as it is when run as a script
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent / "examples"))
_spec = importlib.util.spec_from_file_location("tvmbits_benchmark_layers", HERE / "layers.py")
layers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layers)
LAYERS, float_conv, macs, write_report = layers.LAYERS, layers.float_conv, layers.macs, layers.write_report

BIPOLAR = Encoding("bipolar", 1)
GEMM_SIZE = 4096
PEAK_CHAINS, PEAK_ITERS, PEAK_WARPS = 8, 4096, 4


def local_target() -> tvm.target.Target:
    arch = "sm_" + tvm.cuda(0).compute_version.replace(".", "")
    return tvm.target.Target({"kind": "cuda", "arch": arch}, host="llvm")


def time_tvm(executable, name: str, args, repeat: int) -> float:
    """Median ms of the compiled function `name` of `executable` (`tvm.compile`'s) on `args`, on the GPU."""
    timer = executable.mod.time_evaluator(name, tvm.cuda(0), number=10, repeat=repeat)
    return float(np.median(timer(*args).results)) * 1e3


def bmma_peak(repeat: int) -> float:
    """bit-MACs/s of back-to-back 1-bit MMAs (module docstring)."""
    blocks = 8 * tvm.cuda(0).multi_processor_count
    peak = peak_kernel(blocks)
    func = tvm.compile(tvm.IRModule({"peak": peak}), target=local_target())
    out = tvm.runtime.tensor(np.zeros(blocks * PEAK_WARPS * 32, np.int32), tvm.cuda(0))
    ms = time_tvm(func, "peak", [out], repeat)
    mmas = blocks * PEAK_WARPS * PEAK_ITERS * PEAK_CHAINS
    return mmas * 8 * 8 * 128 / (ms * 1e-3)


def peak_kernel(blocks: int) -> tvm.tirx.PrimFunc:
    """`blocks` blocks of PEAK_WARPS warps, each PEAK_ITERS × PEAK_CHAINS 1-bit MMAs on registers."""

    @T.prim_func
    def peak(out: T.Buffer((blocks * PEAK_WARPS * 32,), "int32")):
        T.func_attr({"global_symbol": "peak", "tirx.noalias": True})
        for bx in T.thread_binding(blocks, thread="blockIdx.x"):
            for ty in T.thread_binding(PEAK_WARPS, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    a = T.alloc_buffer((1,), "uint32", scope="local")
                    b = T.alloc_buffer((1,), "uint32", scope="local")
                    acc = T.alloc_buffer((2 * PEAK_CHAINS,), "int32", scope="local")
                    a[0] = T.Cast("uint32", tx * 40503 + bx)
                    b[0] = T.Cast("uint32", ty * 2654435 + tx)
                    for c in range(2 * PEAK_CHAINS):
                        acc[c] = 0
                    for _ in range(PEAK_ITERS):
                        for c in T.unroll(PEAK_CHAINS):
                            T.evaluate(T.ptx_legacy.mma("m8n8k128", "row", "col", "int1", "int1", "int32",
                                                        a.data, 0, b.data, 0, acc.data, c * 2, False, "and",
                                                        dtype="int32"))
                    total = T.alloc_buffer((1,), "int32", scope="local")
                    total[0] = 0
                    for c in range(2 * PEAK_CHAINS):
                        total[0] = total[0] + acc[c]
                    out[(bx * PEAK_WARPS + ty) * 32 + tx] = total[0]

    return peak


def gemm_module(size: int, target: tvm.target.Target) -> tvm.IRModule:
    """tvmbits' bipolar size³ GEMM form on packed operands, its per-row and per-column terms
    given (as the compiler gives them), scheduled."""
    words = size // 32
    data = te.placeholder((size, 1, words), "uint32", "data")
    weight = te.placeholder((size, 1, words), "uint32", "weight")
    offset = te.placeholder((size,), "int32", "offset")
    weight_term = te.placeholder((1, 1, size), "int32", "weight_term")
    out = bitserial_dense_gemm(data, weight, size, BIPOLAR, BIPOLAR, offset=offset, weight_term=weight_term)
    mod = tvm.IRModule({"main": te.create_prim_func([data, weight, offset, weight_term, out])})
    with target:
        return dlight.ApplyDefaultSchedule(*default_rules(target))(mod)


def binary_gemm(size: int, repeat: int) -> float:
    """ms of tvmbits' bipolar size³ GEMM form (`gemm_module`) on this GPU."""
    words = size // 32
    target = local_target()
    func = tvm.compile(gemm_module(size, target), target=target)
    rng = np.random.default_rng(0)
    dev = tvm.cuda(0)
    args = [tvm.runtime.tensor(rng.integers(0, 2**32, (size, 1, words), dtype=np.uint64).astype(np.uint32), dev)
            for _ in range(2)]
    args += [tvm.runtime.tensor(np.zeros(shape, np.int32), dev) for shape in ((size,), (1, 1, size), (size, size))]
    return time_tvm(func, "main", args, repeat)


def torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def time_torch(torch, fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def torch_gemms(torch, size: int, repeat: int) -> dict[str, float]:
    a = torch.randn(size, size, device="cuda", dtype=torch.float16)
    b = torch.randn(size, size, device="cuda", dtype=torch.float16)
    times = {"fp16": time_torch(torch, lambda: a @ b, repeat)}
    a8 = torch.randint(-128, 127, (size, size), device="cuda", dtype=torch.int8)
    b8 = torch.randint(-128, 127, (size, size), device="cuda", dtype=torch.int8)
    try:
        times["int8"] = time_torch(torch, lambda: torch._int_mm(a8, b8), repeat)
    except (RuntimeError, AttributeError):
        pass
    return times


def with_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch
    return model


def time_tvmbits(model: onnx.ModelProto, x: np.ndarray, repeat: int) -> tuple[float, float]:
    """(model ms, its bit-serial kernels' ms) of `model` compiled for this GPU."""
    compiled = tvmbits.load(tvmbits.compile(model, "cuda"))
    total = compiled.benchmark(repeat, {"input": x})["median"]
    rows = compiled.profile({"input": x}, runs=min(repeat, 10))
    return total, sum(row["ms"] for row in rows if "bitserial_conv2d" in row["name"] or "bitserial_dense" in row["name"])


def torch_conv(torch, layer, batch: int, repeat: int) -> float:
    size, cin, cout, stride = layer
    x = torch.randn(batch, cin, size, size, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3, device="cuda", dtype=torch.float16).to(memory_format=torch.channels_last)
    return time_torch(torch, lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=1), repeat)


def torch_resnet18(torch):
    """A float ResNet-18 (random weights) in fp16, channels-last: the PyTorch contender."""
    nn = torch.nn

    def block(cin, cout, stride):
        body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        return body, short

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            self.blocks = nn.ModuleList()
            cin = 64
            for stage, cout in enumerate((64, 128, 256, 512)):
                for index in range(2):
                    self.blocks.append(nn.ModuleList(block(cin, cout, 2 if stage and not index else 1)))
                    cin = cout
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            x = self.stem(x)
            for body, short in self.blocks:
                x = torch.relu(body(x) + short(x))
            return self.fc(x.mean((2, 3)))

    return Net().cuda().half().eval().to(memory_format=torch.channels_last)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if not tvm.cuda(0).exist:
        print("benchmarks/cuda.py needs a CUDA GPU; this machine has none", file=sys.stderr)
        return 2
    _register_cuda_compiler(tvm.cuda(0))
    torch = torch_cuda()
    dev = tvm.cuda(0)
    lines = [f"# tvmbits on {dev.device_name} ({local_target().attrs['arch']})", "",
             f"tvmbits {tvmbits.__version__} on TVM {tvm.__version__}"
             + (f", PyTorch {torch.__version__} (CUDA {torch.version.cuda})" if torch else ", no CUDA PyTorch")
             + f"; medians of {args.repeat} runs. Default (untuned) CUDA schedules.", ""]

    peak = bmma_peak(args.repeat)
    gemm_ms = binary_gemm(GEMM_SIZE, args.repeat)
    gemm_rate = GEMM_SIZE**3 / (gemm_ms * 1e-3)
    lines += ["## 1-bit tensor cores", "",
              f"- measured BMMA (and.popc) peak: {peak / 1e12:.1f} T bit-MACs/s",
              f"- binary GEMM {GEMM_SIZE}³: {gemm_ms:.3f} ms, {gemm_rate / 1e12:.1f} T bit-MACs/s, "
              f"{100 * gemm_rate / peak:.0f}% of the peak (goal: ≥ 30%)"]
    if torch:
        for kind, ms in torch_gemms(torch, GEMM_SIZE, args.repeat).items():
            lines.append(f"- PyTorch {kind} GEMM {GEMM_SIZE}³: {ms:.3f} ms ({GEMM_SIZE**3 / ms / 1e9:.1f} T MACs/s)")
    print("\n".join(lines), flush=True)

    rng = np.random.default_rng(0)
    lines += ["", "## ResNet-18 3×3 convs, W1A1", "",
              "| layer | batch | tvmbits layer ms | kernel ms | kernel T bit-MACs/s | % of peak | PyTorch fp16 ms | speedup |",
              "|---|---|---|---|---|---|---|---|"]
    for layer in LAYERS:
        size, cin, cout, stride = layer
        for batch in (1, 64):
            model = with_batch(float_conv(layer, rng, "Sign"), batch)
            x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
            total, kernel = time_tvmbits(model, x, args.repeat)
            rate = macs(layer) * batch / (kernel * 1e-3)
            theirs = torch_conv(torch, layer, batch, args.repeat) if torch else float("nan")
            lines.append(f"| {size}×{size}×{cin}→{cout}/s{stride} | {batch} | {total:.3f} | {kernel:.3f} | "
                         f"{rate / 1e12:.1f} | {100 * rate / peak:.0f}% | {theirs:.3f} | {theirs / total:.2f}× |")
            print(lines[-1], flush=True)

    from bireal_resnet18 import build_model, make_input

    lines += ["", "## Binarized ResNet-18 (examples/bireal_resnet18.py, 224×224)", "",
              "| batch | tvmbits ms | PyTorch fp16 ResNet-18 ms | speedup |", "|---|---|---|---|"]
    net = torch_resnet18(torch) if torch else None
    for batch in (1, 64):
        x = np.concatenate([make_input(224, seed=i) for i in range(batch)])
        total, _ = time_tvmbits(with_batch(build_model(224), batch), x, args.repeat)
        theirs = float("nan")
        if net is not None:
            tx = torch.from_numpy(x).cuda().half().to(memory_format=torch.channels_last)
            with torch.no_grad():
                theirs = time_torch(torch, lambda: net(tx), args.repeat)
        lines.append(f"| {batch} | {total:.3f} | {theirs:.3f} | {theirs / total:.2f}× |")
        print(lines[-1], flush=True)
    path = write_report(args.out, "cuda.md", "\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
