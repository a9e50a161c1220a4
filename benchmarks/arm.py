"""Arm speed without a board: instructions per inference on emulated Arm CPU models, and
llvm-mca's cycle estimate of each kernel's hot loop.

For ResNet-18's 3×3 conv layers (W1A1, W1A2, W2A2, W4A4, the models of `layers.py`) and the
binarized ResNet-18 example (`resnet18.py`), tvmbits builds for the board profile of each CPU
model (`rpi4`: Cortex-A72, no dot product; `rpi5`: Cortex-A76, SDOT) and ONNX Runtime's aarch64
wheel (the x86 run's version) runs the float32 and int8 models of the same scripts, all on the
same QEMU CPU model, one thread, counted with QEMU's instruction-counting plugin
(`arm_count.py`). Instructions are a proxy for time, not a board timing: they ignore the
memory system, issue width and latencies. llvm-mca (the newest `llvm-mca-N` installed) adds a
static cycle estimate of each conv kernel's hot loop on Cortex-A53 (rpi3 build), A72 (rpi4) and
A76 (rpi5), for the first layer.

Needs root, the emulated arm64 board (built on first use), Debian's dynamic `qemu-user`
(`apt-get install --no-install-recommends qemu-user`), gcc and libglib2.0-dev for the plugin,
and `llvm-N` for llvm-mca. Takes about 20 minutes on 2 cores.

    python benchmarks/arm.py [--layers 0,6] [--no-resnet] [--out benchmarks/results]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tvm
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

import tvmbits
from arm_count import build_plugin, count, install_counter, install_onnxruntime
from layers import BITS, LAYERS, float_conv, int8_conv, macs, write_report
from tvmbits.board import emulate

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from bireal_resnet18 import build_model, make_input  # noqa: E402
from resnet18 import _RandomInputs, float_resnet18  # noqa: E402

CPUS = [("cortex-a72", "rpi4"), ("cortex-a76", "rpi5")]  # QEMU CPU model, profile built for it
MCA = [("cortex-a53", "rpi3"), ("cortex-a72", "rpi4"), ("cortex-a76", "rpi5")]
# vector instructions of a kernel's hot loop → multiply-accumulates each does
WORK = [(r"^cnt\s+v\d+\.16b", "popcount", 128), (r"^cnt\s+v\d+\.8b", "popcount", 64),
        (r"^[su]dot\s+v", "dot", 16), (r"^smull2?\s+v\d+\.8h", "dot", 8), (r"^mul\s+v\d+\.16b", "dot", 16)]


def cache() -> Path:
    return emulate.cache_dir()


def build_items(root: Path, folder: Path, picked: list, resnet: bool, log) -> tuple[dict, list]:
    """Models and inputs under `folder` (in the board's root file system): ONNX Runtime items
    shared by the CPU models, tvmbits items per profile; also the layer rows of the report."""
    inside = "/" + str(folder.relative_to(root))
    rng = np.random.default_rng(0)
    items = {profile: [] for _, profile in CPUS}
    shared, rows = [], []
    for index, layer in enumerate(picked):
        size, cin, cout, stride = layer
        x = rng.standard_normal((1, cin, size, size)).astype(np.float32)
        np.save(folder / f"L{index}.x.npy", x)
        np.save(folder / f"L{index}.u8.npy", rng.integers(0, 256, x.shape).astype(np.uint8))
        onnx.save(float_conv(layer, rng), folder / f"L{index}.fp32.onnx")
        onnx.save(int8_conv(layer, rng), folder / f"L{index}.int8.onnx")
        shared += [{"name": f"L{index}.fp32", "kind": "ort", "path": f"{inside}/L{index}.fp32.onnx",
                    "input": f"{inside}/L{index}.x.npy"},
                   {"name": f"L{index}.int8", "kind": "ort", "path": f"{inside}/L{index}.int8.onnx",
                    "input": f"{inside}/L{index}.u8.npy"}]
        row = {"layer": layer, "macs": macs(layer), "kernels": {}}
        for wbits, abits in BITS:
            key = f"W{wbits}A{abits}"
            model = float_conv(layer, rng, "Sign" if (wbits, abits) == (1, 1) else "Relu")
            onnx.save(model, folder / f"L{index}.{key}.onnx")
            for _, profile in CPUS + ([MCA[0]] if index == 0 else []):
                bits = {} if (wbits, abits) == (1, 1) else dict(wbits=wbits, abits=abits, all_layers=True)
                started = time.monotonic()
                art = tvmbits.compile(folder / f"L{index}.{key}.onnx", profile, **bits)
                meta = art.metadata
                shutil.copy(art.library, folder / f"L{index}.{key}.{profile}.so")
                row["kernels"][(key, profile)] = meta["layers"][0]["kernel"]
                log(f"built layer {index} {key} for {profile} ({meta['layers'][0]['kernel']}, "
                    f"{time.monotonic() - started:.0f} s)")
                if profile in items:
                    items[profile].append({"name": f"L{index}.{key}", "kind": "tvm",
                                           "path": f"{inside}/L{index}.{key}.{profile}.so",
                                           "input": f"{inside}/L{index}.x.npy"})
        rows.append(row)
    if resnet:
        x = make_input(224, seed=1)
        np.save(folder / "r18.x.npy", x)
        onnx.save(float_resnet18(), folder / "r18.fp32.onnx")
        log("quantizing ResNet-18 with ONNX Runtime (QDQ, per-channel int8 weights, uint8 activations)")
        quantize_static(str(folder / "r18.fp32.onnx"), str(folder / "r18.int8.onnx"), _RandomInputs(8),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        shared += [{"name": f"r18.{kind}", "kind": "ort", "path": f"{inside}/r18.{kind}.onnx",
                    "input": f"{inside}/r18.x.npy"} for kind in ("fp32", "int8")]
        onnx.save(build_model(224), folder / "bireal.onnx")
        for _, profile in CPUS:
            started = time.monotonic()
            art = tvmbits.compile(folder / "bireal.onnx", profile)  # its library lives as long as `art`
            shutil.copy(art.library, folder / f"bireal.{profile}.so")
            log(f"built the binarized ResNet-18 for {profile} ({time.monotonic() - started:.0f} s)")
            items[profile].append({"name": "bireal", "kind": "tvm", "path": f"{inside}/bireal.{profile}.so",
                                   "input": f"{inside}/r18.x.npy"})
    return {profile: shared + own for profile, own in items.items()}, rows


def newest_tool(name: str) -> str | None:
    found = sorted((int(p.name.rsplit("-", 1)[1]), str(p)) for p in Path("/usr/bin").glob(f"{name}-[0-9]*"))
    return found[-1][1] if found else shutil.which(name)


def hot_loop(library: Path) -> tuple[list[str], dict]:
    """The conv kernel's hot loop: of its loops (a backward branch and the code from its target),
    the one doing the most multiply-accumulates; its instructions (branch dropped) and work."""
    text = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(library)],
                          capture_output=True, text=True, check=True).stdout
    best, best_macs, best_work = [], 0, {}
    for body in re.findall(r"<fused_\w*conv2d\w*_compute_>:\n(.*?)(?:\n\n|\Z)", text, re.S):
        lines = []
        for raw in body.splitlines():
            match = re.match(r"^\s*([0-9a-f]+):\s+(.+)$", raw)
            if match:
                lines.append((int(match.group(1), 16), match.group(2).split("//")[0].split("<")[0].strip()))
        for index, (address, instruction) in enumerate(lines):
            branch = re.match(r"^(?:b(?:\.\w+)?|cbn?z\s+\w+,|tbn?z\s+\w+,\s*#\d+,)\s*([0-9a-f]+)$", instruction)
            if not branch or int(branch.group(1), 16) >= address:
                continue
            loop = [ins for addr, ins in lines[:index] if addr >= int(branch.group(1), 16)]
            work = Counter()
            for ins in loop:
                for pattern, kind, amount in WORK:
                    if re.match(pattern, ins):
                        work[kind] += amount
            total = sum(work.values())
            if total > best_macs or (total == best_macs and total and len(loop) < len(best)):
                best, best_macs, best_work = loop, total, dict(work)
    return best, best_work


def mca_cycles(mca: str, loop: list[str], cpu: str) -> float | None:
    """llvm-mca's cycles per iteration of `loop` on `cpu` (its steady-state estimate); the
    loop's inner branches (taken or not, to addresses it cannot assemble) are left out."""
    branch = re.compile(r"^(?:b(?:\.\w+)?|bl|cbn?z|tbn?z)\s")
    source = "\n".join(ins for ins in loop if not branch.match(ins)) + "\n"
    done = subprocess.run([mca, "-mtriple=aarch64-linux-gnu", f"-mcpu={cpu}", "-mattr=+dotprod", "-iterations=200"],
                          input=source, capture_output=True, text=True)
    match = re.search(r"Total Cycles:\s+(\d+)", done.stdout)
    return int(match.group(1)) / 200 if match else None


def mca_table(folder: Path, bits_keys: list[str], log) -> list[str]:
    mca = newest_tool("llvm-mca")
    if mca is None:
        return ["llvm-mca is not installed (`apt-get install llvm-19`): no cycle estimates."]
    version = subprocess.run([mca, "--version"], capture_output=True, text=True).stdout
    version = re.search(r"LLVM version ([\d.]+)", version)
    lines = [f"Hot loop of each conv kernel of layer 0 ({LAYERS[0][0]}×{LAYERS[0][0]}, "
             f"{LAYERS[0][1]}→{LAYERS[0][2]}), by llvm-mca {version.group(1) if version else ''} "
             "(cycles per loop iteration, steady state; MACs per iteration: bit-serial loops count bits "
             "÷ (weight bits × activation bits), dot-product loops 16 per SDOT, 8 per SMULL):", "",
             "The hot loop's instructions × its iterations per inference (layer MACs ÷ MACs per iteration) "
             "is what the loop executes per inference; the rest of the counted instructions go to "
             "quantizing, packing and transposing the layer's input, the epilogue "
             "and the loop nest outside the hot loop.", "",
             "| kernel | build | loop instructions | MACs per iteration | hot loop M instructions per inference | "
             + " | ".join(f"{cpu} cycles (per 1k MACs)" for cpu, _ in MCA) + " |",
             "|---" * (5 + len(MCA)) + "|"]
    for key in bits_keys:
        wbits, abits = int(key[1]), int(key[3])
        for cpu_build, profile in MCA:
            loop, work = hot_loop(folder / f"L0.{key}.{profile}.so")
            if not loop:
                continue
            # a bit-serial loop's UDOT (rpi5) sums popcounts, it multiplies nothing
            work_macs = work["popcount"] / (wbits * abits) if work.get("popcount") else work.get("dot", 0)
            cells = []
            for cpu, _ in MCA:
                if cpu != cpu_build:
                    cells.append("")
                    continue
                cycles = mca_cycles(mca, loop, cpu)
                cells.append(f"{cycles:.1f} ({cycles * 1000 / work_macs:.1f})" if cycles and work_macs else "n/a")
            in_loop = len(loop) * macs(LAYERS[0]) / work_macs / 1e6 if work_macs else float("nan")
            lines.append(f"| {key} | {profile} | {len(loop)} | {work_macs:.0f} | {in_loop:.1f} | " + " | ".join(cells) + " |")
            log(lines[-1])
    return lines


def geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def report(rows, counts, resnet, mca_lines, n1, n2) -> str:
    lines = [
        "# Arm without a board: instructions per inference on emulated Cortex-A72 and A76",
        "",
        f"tvmbits {tvmbits.__version__} on TVM {tvm.__version__}; ONNX Runtime {ort.__version__} (aarch64 wheel); "
        f"QEMU {subprocess.run(['dpkg-query', '-W', '-f', '${Version}', 'qemu-user'], capture_output=True, text=True).stdout} "
        "user mode with its instruction-counting plugin (insn.c, inline); batch 1, one thread; "
        f"per-inference counts are (count of {n2} inferences − count of {n1}) / {n2 - n1}, in millions. "
        "tvmbits builds for `rpi4` on the Cortex-A72 model and `rpi5` on the Cortex-A76 model. "
        "**Instruction counts under emulation are a proxy, not board timings.**",
        "",
    ]
    for cpu, profile in CPUS:
        c = counts[cpu]
        lines += [f"## {cpu} (`{profile}`)", "",
                  "| layer | MMACs | ORT fp32 | ORT int8 | " + " | ".join(f"W{w}A{a}" for w, a in BITS)
                  + " | ORT int8 ÷ W1A1 | ORT int8 ÷ W4A4 |",
                  "|---" * (6 + len(BITS)) + "|"]
        for i, row in enumerate(rows):
            size, cin, cout, stride = row["layer"]
            cells = [f"{size}×{size}, {cin}→{cout}, s{stride}", f"{row['macs'] / 1e6:.0f}",
                     f"{c[f'L{i}.fp32'] / 1e6:.1f}", f"{c[f'L{i}.int8'] / 1e6:.1f}"]
            cells += [f"{c[f'L{i}.W{w}A{a}'] / 1e6:.1f} ({row['kernels'][(f'W{w}A{a}', profile)]})" for w, a in BITS]
            cells += [f"{c[f'L{i}.int8'] / c[f'L{i}.W1A1']:.2f}×", f"{c[f'L{i}.int8'] / c[f'L{i}.W4A4']:.2f}×"]
            lines.append("| " + " | ".join(cells) + " |")

        def ratio(base, key):
            return geomean([c[f"L{i}.{base}"] / c[f"L{i}.{key}"] for i in range(len(rows))])

        lines += ["", "Geometric means (fewer instructions than ONNX Runtime, ×): "
                  + "; ".join(f"W{w}A{a} {ratio('int8', f'W{w}A{a}'):.2f}× int8, {ratio('fp32', f'W{w}A{a}'):.2f}× fp32"
                              for w, a in BITS) + "."]
        if resnet:
            lines += ["", "| whole network | M instructions | ORT int8 ÷ this |", "|---|---|---|",
                      f"| ONNX Runtime float32 ResNet-18 | {c['r18.fp32'] / 1e6:.0f} | {c['r18.int8'] / c['r18.fp32']:.2f}× |",
                      f"| ONNX Runtime int8 (QDQ) ResNet-18 | {c['r18.int8'] / 1e6:.0f} | 1× |",
                      f"| tvmbits binarized ResNet-18 (`{profile}`) | {c['bireal'] / 1e6:.0f} | "
                      f"{c['r18.int8'] / c['bireal']:.2f}× |"]
        lines.append("")
    lines += ["## Hot loops (static)", "", *mca_lines, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", help="comma-separated indices into layers.LAYERS (default: all)")
    parser.add_argument("--no-resnet", action="store_true", help="skip the whole ResNet-18 models")
    parser.add_argument("--n1", type=int, default=1)
    parser.add_argument("--n2", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("arm.py needs root (the emulated board's chroot)")
    picked = [LAYERS[int(i)] for i in args.layers.split(",")] if args.layers else LAYERS

    def log(message):
        print(message, flush=True)

    root = emulate.build("arm64", log)
    prefix = install_counter(root, build_plugin(cache(), log))
    ort_path = install_onnxruntime(root, ort.__version__.split("+")[0], log)
    folder = root / "tmp" / f"arm-bench-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    try:
        items, rows = build_items(root, folder, picked, not args.no_resnet, log)
        counts = {}
        for cpu, profile in CPUS:
            log(f"counting on {cpu} ({len(items[profile])} models)")
            counts[cpu] = count(root, prefix, cpu, items[profile], args.n1, args.n2, log, ort_path)
        mca_lines = mca_table(folder, [f"W{w}A{a}" for w, a in BITS], log)
        text = report(rows, counts, not args.no_resnet, mca_lines, args.n1, args.n2)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"wrote {write_report(args.out, 'arm.md', text)}")


if __name__ == "__main__":
    main()
