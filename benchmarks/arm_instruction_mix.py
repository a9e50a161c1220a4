"""The hot loop of the W1A1 conv kernel cross-compiled for arm64 and armv7, read from the cross
objdump: its instruction mix and instructions per 128 bit-MACs (Larq Compute Engine's aarch64
kernel spends 5: EOR, CNT, ADDP, UADDLP, UADALP). Arm boards cannot be timed here; this is what
can be checked about their kernels on this machine.

The hot loop is the loop (a backward branch and the code from its target) holding the most
vector popcounts of XORed words in the kernel (the function also counts the weights' bits once
per call, for the zero-padding correction, in loops with no XOR); each `cnt vN.16b` / `vcnt.8 qN` counts 128 bits, each
`cnt vN.8b` / `vcnt.8 dN` 64 bits, one bit-MAC per bit.

    python benchmarks/arm_instruction_mix.py [--layer 0] [--out benchmarks/results]
"""

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from layers import LAYERS, float_conv
import tvmbits

OBJDUMP = {"arm64": "aarch64-linux-gnu-objdump", "armv7": "arm-linux-gnueabihf-objdump"}
XOR = {"arm64": r"^eor\s+v\d+", "armv7": r"^veor\s+[qd]\d+"}
POPCOUNT = {  # regex → bits counted by one instruction
    "arm64": [(r"^cnt\s+v\d+\.16b", 128), (r"^cnt\s+v\d+\.8b", 64)],
    "armv7": [(r"^vcnt\.8\s+q\d+", 128), (r"^vcnt\.8\s+d\d+", 64)],
}


def kernel_lines(objdump: str, library: Path) -> list[tuple[int, str]]:
    """(address, instruction) of the bit-serial conv kernel's body."""
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True,
                          check=True).stdout
    body = re.search(r"<fused_bitserial_conv2d[^>]*_compute_>:\n(.*?)(?:\n\n|\Z)", text, re.S).group(1)
    lines = []
    for raw in body.splitlines():
        match = re.match(r"^\s*([0-9a-f]+):\s+(.+)$", raw)
        if match:
            lines.append((int(match.group(1), 16), match.group(2).split("//")[0].split(";")[0].strip()))
    return lines


def hot_loop(lines: list[tuple[int, str]], target: str) -> tuple[list[str], int]:
    """Instructions of the loop with the most popcounts, and the bits they count per iteration."""
    best, best_bits = [], 0
    for index, (address, instruction) in enumerate(lines):
        branch = re.match(r"^b(?:\.\w+|ne|eq|lt|gt|le|ge|lo|hs|hi|ls|cc|cs)?\s+([0-9a-f]+)", instruction)
        if not branch or int(branch.group(1), 16) >= address:
            continue
        start = int(branch.group(1), 16)
        loop = [ins for addr, ins in lines[: index + 1] if addr >= start]
        bits = sum(b for ins in loop for pattern, b in POPCOUNT[target] if re.match(pattern, ins))
        if bits > best_bits and any(re.match(XOR[target], ins) for ins in loop):
            best, best_bits = loop, bits
    return best, best_bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=0, help="index into layers.LAYERS")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    layer = LAYERS[args.layer]
    size, cin, cout, stride = layer
    report = [
        f"# W1A1 conv {size}×{size}, {cin}→{cout}, stride {stride}: hot loop on Arm (static, from objdump)",
        "",
        "| target | instructions in the loop | bits counted per iteration | instructions per 128 bit-MACs | mix |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(float_conv(layer, np.random.default_rng(0), "Sign"), f"{tmp}/layer.onnx")
        for target in ("arm64", "armv7"):
            art = tvmbits.compile(f"{tmp}/layer.onnx", target)  # its library lives as long as `art`
            loop, bits = hot_loop(kernel_lines(OBJDUMP[target], art.library), target)
            if not bits:
                sys.exit(f"{target}: no loop with a vector popcount in the kernel")
            mix = Counter(instruction.split()[0] for instruction in loop).most_common(8)
            per_128 = len(loop) * 128 / bits
            report.append(
                f"| {target} | {len(loop)} | {bits} | {per_128:.2f} | "
                + ", ".join(f"{name} {count}" for name, count in mix) + " |"
            )
            print(f"{target}: {len(loop)} instructions count {bits} bits: {per_128:.2f} per 128 bit-MACs", flush=True)
    report += ["", "Larq Compute Engine's aarch64 kernel: 5 instructions per 128 bit-MACs.", ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "arm_instruction_mix.md").write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    main()
