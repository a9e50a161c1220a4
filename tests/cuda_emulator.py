"""Run a CUDA PrimFunc's generated kernels on the CPU, to check their numbers without a GPU.

The scheduled PrimFunc is lowered by TVM's own CUDA pipeline; its host part gives the kernels'
order, arguments, intermediate buffers and launch dimensions (`call_ffi_kernel`), its device
part the CUDA C source that a GPU build would compile. That source is compiled here as C++
(g++ -std=c++20) with an emulation of what it uses of CUDA (`cuda_emulator.h`): every thread
of a block is an OS thread, `__syncthreads` a block barrier, `__shared__` arrays one per block
(filled with garbage first), warps of 32 consecutive threads, `__shfl_sync` an exchange
between a warp's threads, and the `mma.sync.aligned.m8n8k128 ... b1 ... and.popc` and
`m8n8k16 ... u8/s8` instructions computed from the fragment layouts of the PTX ISA (lane t
holds 32 bits of A row t/4 and of B column t/4 at reduction offset 32·(t % 4) bits, and
C[t/4, 2·(t % 4) + {0, 1}]), written independently of tvmbits' tensor intrinsics.

This checks the schedules (tiling, padding, shared-memory staging and synchronisation, the
warp-memory accumulators, the fused epilogue) and the intrinsics' operand addressing; it does
not check nvcc, the hardware, or timing. Intermediate global buffers start as garbage too. The
kernels run in a forked process, killed after TIMEOUT_S (a broken kernel can deadlock).
"""

import ctypes
import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import tvm
from tvm.tirx.build import codegen_build, split_host_device_mods

HEADER = Path(__file__).with_name("cuda_emulator.h")
MMA_KINDS = {"b1.b1": 0, "u8.s8": 1, "u8.u8": 2}
TIMEOUT_S = 300  # for one function's kernels; the largest test case takes seconds


def emulate(mod: tvm.IRModule, target: tvm.target.Target, args: list[np.ndarray], folder: Path) -> None:
    """Run `mod["main"]` (scheduled for the CUDA `target`) on `args` in place, as a GPU would:
    the outputs are written into their arrays."""
    mod = tvm.tirx.transform.BindTarget(target.with_host("llvm"))(mod)
    pipeline, _, finalize_device = tvm.tirx.get_default_tir_pipeline(target)
    host, devices = split_host_device_mods(pipeline(mod))
    (device,) = devices.values()
    source = codegen_build(finalize_device()(device), target).inspect_source()
    library = _compile(source, folder)
    launches, buffers, params = _launches(host["main"], mod["main"])
    memory = {}
    for name, (dtype, size) in buffers.items():  # intermediates: garbage, as a GPU's would be
        memory[name] = np.frombuffer(np.random.default_rng(7).bytes(size * np.dtype(dtype).itemsize), dtype).copy()
    for name, index in params.items():
        param = mod["main"].params[index]
        assert args[index].flags.c_contiguous and str(args[index].dtype) == str(param.dtype), (name, args[index].dtype)
        assert args[index].shape == tuple(int(d) for d in param.shape), (name, args[index].shape)
        memory[name] = args[index]
    _in_child(lambda: _run(library, launches, memory), args, folder)


def _run(library, launches, memory) -> None:
    for name, arg_names, dims in launches:
        pointers = (ctypes.c_void_p * len(arg_names))(*[memory[a].ctypes.data for a in arg_names])
        getattr(library, f"emu_launch_{name}")(pointers, *[ctypes.c_int(d) for d in dims])


def _in_child(run, args: list[np.ndarray], folder: Path) -> None:
    """`run()` in a forked process, which writes `args` back (the outputs among them) for this
    one to copy in: a kernel whose threads disagree on a barrier would hang the emulation, and
    a process can be killed after TIMEOUT_S where threads in C++ cannot."""
    result = folder / f"emulated_{os.getpid()}.npz"
    child = os.fork()
    if child == 0:
        code = 1
        try:
            run()
            np.savez(result, *args)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            raise TimeoutError(f"the emulated kernels ran over {TIMEOUT_S} s (threads waiting on a barrier?)")
        time.sleep(0.05)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the emulated kernels failed (exit status {os.waitstatus_to_exitcode(status)})")
    with np.load(result) as saved:
        for i, array in enumerate(args):
            array[...] = saved[f"arr_{i}"]
    result.unlink()


def _launches(host_main: tvm.tirx.PrimFunc, original: tvm.tirx.PrimFunc):
    """[(kernel, argument buffer names, (grid x y z, block x y z))], {name: (dtype, elements)} of
    the intermediates, {name: parameter index} of the parameters, read from the host function's
    TVMScript (TVM 0.27 has no Python statement visitor)."""
    text = host_main.script()
    params = {p.name: i for i, p in enumerate(original.params)}
    buffers = {name: (dtype, int(np.prod([int(d) for d in shape.split(",") if d.strip()])))
               for name, shape, dtype in re.findall(r'(\w+) = T\.alloc_buffer\(\(([\d, ]+)\), "(\w+)"', text)}
    views = dict(re.findall(r"(\w+) = (\w+)\.view\(", text))  # aliases of one buffer's data
    views.update(re.findall(r"(\w+) = T\.decl_buffer\([^\n]*?data=(\w+)\.data", text))
    launches = []
    for kernel, arguments, tags in re.findall(r'T\.call_ffi_kernel\("(\w+)", (.*?), launch_params=\[(.*?)\]', text):
        names, extents = [], []
        for argument in (a.strip() for a in arguments.split(",")):
            if argument.endswith(".data"):
                name = argument[: -len(".data")]
                names.append(views.get(name, name))
            else:
                extents.append(int(argument))
        dims = dict.fromkeys(("blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z"), 1)
        for tag, extent in zip(re.findall(r'"([\w.]+)"', tags), extents):
            dims[tag] = extent
        launches.append((kernel, names, tuple(dims.values())))
    return launches, buffers, params


def _compile(source: str, folder: Path):
    body = source[source.index('extern "C"'):]
    kernels = re.findall(r'extern "C" __global__ void __launch_bounds__\(\d+\) (\w+)\(([^)]*)\) \{', body)
    body = re.sub(r"__shared__ alignas\(\d+\) ([\w ]+?) (\w+)\[(\d+)\];",
                  lambda m: f'{m[1]}* {m[2]} = ({m[1]}*) emu_shared("{m[2]}", sizeof({m[1]}) * {m[3]});', body)
    body = _replace_mma(body)
    launchers = []
    for name, params in kernels:
        casts = []
        for i, param in enumerate(p.strip() for p in params.split(",")):
            ctype = param.rsplit(" ", 1)[0].replace("__restrict__", "").strip()
            casts.append(f"({ctype}) args[{i}]")
        launchers.append(
            f'extern "C" void emu_launch_{name}(void** args, int gx, int gy, int gz, int bx, int by, int bz) {{\n'
            f"  emu_run_grid(gx, gy, gz, bx, by, bz, [&] {{ {name}({', '.join(casts)}); }});\n}}\n"
        )
    code = f'#include "{HEADER}"\n' + body + "\n" + "\n".join(launchers)
    digest = hashlib.sha256((code + HEADER.read_text()).encode()).hexdigest()[:16]
    cpp, library = folder / f"emu_{digest}.cpp", folder / f"emu_{digest}.so"
    if not library.exists():
        cpp.write_text(code)
        built = subprocess.run(["g++", "-std=c++20", "-O1", "-w", "-shared", "-fPIC", "-pthread", "-o", str(library),
                                str(cpp)], capture_output=True, text=True)
        if built.returncode:
            raise RuntimeError(f"g++ failed on {cpp}:\n{built.stderr[:2000]}")
    return ctypes.CDLL(str(library))


def _replace_mma(body: str) -> str:
    """Each inline-PTX `mma.sync` statement becomes a call of the emulation, with its operands."""
    out, start = [], 0
    for match in re.finditer(r"__asm__ __volatile__\(", body):
        if match.start() < start:
            continue
        end = _closing(body, match.end() - 1)
        statement = body[match.start():end + 1]
        instruction = re.search(r'"mma\.sync\.aligned\.m8n8k\d+\.row\.col\.s32\.(\w+\.\w+)\.s32', statement)
        if instruction is None:
            raise NotImplementedError(f"inline PTX the emulator does not know: {statement[:120]}")
        operands = []
        for op in re.finditer(r'"=?r"\(', statement):
            operands.append(statement[op.end():_closing(statement, op.end() - 1)])
        kind = MMA_KINDS[instruction.group(1)]
        out.append(body[start:match.start()])
        out.append(f"emu_mma({', '.join(operands)}, {kind})")
        start = end + 1
    out.append(body[start:])
    return "".join(out)


def _closing(text: str, open_index: int) -> int:
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError("unbalanced parentheses")
