"""Per-kernel timing of a Relax VM run, measured where the VM runs (this machine or a board),
and the functions by which a board says what it is (CPU architecture, TVM and tvmbits versions).

Needs only apache-tvm, so a board can register them (`tvmbits board serve` does) without the rest
of tvmbits. The VM's instrument hook is called before and after every Call instruction; the
time between the two, after synchronising the device, is charged to the callee's symbol. VM
builtins (allocation, shape checks) are left out: what remains is the compiled kernels, one row
per kernel with its number of calls per run and the median over runs of its time per run (ms).
"""

import json
import platform
import time

import numpy as np
import tvm

import tvmbits
from tvmbits import threads

MACHINE = "tvmbits.board.machine"
VERSIONS = "tvmbits.board.versions"
PROFILE = "tvmbits.board.profile"
BUILTIN_PREFIX = "vm.builtin."
NO_OP = 0  # VMInstrumentReturnKind: go on as usual


def profile(vm_module, func_name: str, runs: int, *args) -> str:
    """Run `func_name` of the VM `vm_module` `runs` times (after one warm-up run) on `args`.

    Returns JSON: a list of {"name", "calls", "ms"} in the order the kernels are first called.
    """
    device = args[0].device if args else tvm.cpu()
    per_run: list[dict[str, list[float]]] = []
    started: dict[str, float] = {}

    def instrument(_func, symbol, before_run, _ret, *_args):
        if symbol.startswith(BUILTIN_PREFIX):
            return NO_OP
        device.sync()
        if before_run:
            started[symbol] = time.perf_counter()
        else:
            per_run[-1].setdefault(symbol, []).append(time.perf_counter() - started.pop(symbol))
        return NO_OP

    vm_module["set_instrument"](instrument)
    try:
        for _ in range(runs + 1):
            per_run.append({})
            vm_module[func_name](*args)
    finally:
        vm_module["set_instrument"](None)
    timed = per_run[1:]
    rows = [
        {
            "name": name,
            "calls": len(calls),
            "ms": float(np.median([sum(run.get(name, [])) for run in timed])) * 1e3,
        }
        for name, calls in timed[0].items()
    ]
    return json.dumps(rows)


def versions() -> str:
    """JSON {"tvm": ..., "tvmbits": ...}: the versions installed where this runs."""
    return json.dumps({"tvm": tvm.__version__, "tvmbits": tvmbits.__version__})


def register() -> None:
    """Make this process answer `MACHINE`, `VERSIONS` and `PROFILE` calls (run on a board by its
    server), with TVM's thread pool sized to the board's cores (`threads`)."""
    threads.size_pool()
    tvm.register_global_func(MACHINE, platform.machine, override=True)
    tvm.register_global_func(VERSIONS, versions, override=True)
    tvm.register_global_func(PROFILE, profile, override=True)
