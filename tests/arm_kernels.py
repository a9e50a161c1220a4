"""Low-bit kernels cross-built for an Arm board profile and run on the emulated board's CPU model,
for the tests: each case is built here (`lowbit_kernels`' TE and default schedule, linked with the
profile's cross compiler), its inputs and the int64 reference's output saved beside it in the
board's root file system, and one Python process on the board (TVM's aarch64 runtime under
qemu-user on `qemu_cpu`) runs them all and reports, per case, whether it matched.
"""

import json
import shutil
import uuid
from dataclasses import dataclass

import numpy as np
import tvm

from lowbit_kernels import build, inputs
from tvmbits.board import emulate
from tvmbits.ops.encoding import Encoding
from tvmbits.targets.profile import load

# what runs on the board: every case's library on its saved inputs (`lowbit_kernels.inputs`),
# compared with its expected output (the last array saved); one JSON line per case ("ok",
# "mismatch at N of M", or the error)
BOARD_SIDE = '''
import json, sys
from pathlib import Path
import numpy as np
import tvm

folder = Path(sys.argv[1])
for case, count in json.loads((folder / "cases.json").read_text()):
    try:
        func = tvm.runtime.load_module(str(folder / f"{case}.so"))["main"]
        *data, expected = [np.load(folder / f"{case}.{i}.npy") for i in range(count)]
        out = tvm.runtime.tensor(np.zeros_like(expected))
        func(*(tvm.runtime.tensor(x) for x in data), out)
        wrong = int((out.numpy() != expected).sum())
        result = "ok" if not wrong else f"mismatch at {wrong} of {expected.size}"
    except Exception as err:
        result = f"error: {err!r}"[:300]
    print(json.dumps({"case": case, "result": result}), flush=True)
'''


@dataclass(frozen=True)
class Case:
    """One kernel call: `kernel` on (a, w) codes with the given encodings; conv2d when `conv_args`
    is (strides, padding), else dense."""

    name: str
    kernel: str
    a_codes: np.ndarray
    w_codes: np.ndarray
    act: Encoding
    wgt: Encoding
    expected: np.ndarray
    conv_args: tuple = ()

    def module(self, target: tvm.target.Target):
        return build(self.kernel, self.a_codes, self.w_codes, self.act, self.wgt, *self.conv_args, target=target)


def run_on_board(profile: str, cases: list[Case], board: str | None = None, timeout: float = 900) -> dict[str, str]:
    """Build `cases` for `profile`, run them on the emulated board `board` (default: the
    profile's own, on its CPU model); case name → result ("ok", a mismatch, an error)."""
    target = load(profile).tvm_target()
    compiler = tvm.support.cc.cross_compiler(load(profile).cross_compiler)
    root = emulate.build(board or profile)
    folder = root / "tmp" / f"tvmbits-kernels-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    try:
        counts = []
        for case in cases:
            case.module(target).export_library(str(folder / f"{case.name}.so"), fcompile=compiler)
            arrays = [*inputs(case.kernel, case.a_codes, case.w_codes, case.act, case.wgt, *case.conv_args),
                      case.expected.astype("int32")]
            for i, array in enumerate(arrays):
                np.save(folder / f"{case.name}.{i}.npy", array)
            counts.append([case.name, len(arrays)])
        (folder / "cases.json").write_text(json.dumps(counts))
        (folder / "board_side.py").write_text(BOARD_SIDE)
        inside = "/" + str(folder.relative_to(root))
        done = emulate.run(board or profile, f"{emulate.VENV}/bin/python {inside}/board_side.py {inside}", timeout)
        results = {}
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                results[row["case"]] = row["result"]
        for case in cases:  # a case that killed the process (SIGILL) and the ones after it
            results.setdefault(case.name, f"not run: exit code {done.returncode}, {done.stderr.strip()[-300:]}")
        return results
    finally:
        shutil.rmtree(folder, ignore_errors=True)
