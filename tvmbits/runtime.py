"""Where a compiled library runs: this machine, a board over TVM RPC, or a board a tracker assigns.

A `Session` wraps TVM's own RPC client (`tvm.rpc.connect`, `connect_tracker`); it adds the
`--timeout` that TVM lacks (an unreachable board, a tracker with no free board of the key) and
turns every failure of the link into a one-line `UserError` naming the board. A board started
with `tvmbits board serve` also answers which CPU architecture it is (`uname -m`) and which TVM
and tvmbits it runs, so a library built for another architecture or TVM release is refused
before it is uploaded (`deploy.check_board`); a plain TVM rpc_server cannot say, and is trusted.

Timings are `time_evaluator` runs in milliseconds, measured on the device itself; a per-layer
profile times each compiled kernel inside the model's run, on the device (`board.profiler`).
"""

import json
import os
import platform
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm import rpc as tvm_rpc

from tvmbits import threads
from tvmbits.board import profiler
from tvmbits.board.serve import address
from tvmbits.errors import ArtifactError, BoardError
from tvmbits.passes.unpack_at_load import PREPARE
from tvmbits.remote import Remote


@dataclass
class Loaded:
    """A library loaded in the Relax VM of a session's device, with what its `prepare` returned
    (the weights unpacked at load, `passes/unpack_at_load.py`): every call of `main` takes the
    model's inputs and then these."""

    library: tvm.runtime.Module
    vm: relax.VirtualMachine
    device: tvm.runtime.Device
    prepared: tuple

    def arguments(self, inputs: list[np.ndarray]) -> list:
        """`main`'s arguments for `inputs` (copied to the device) and the prepared weights."""
        return [*(tvm.runtime.tensor(a, self.device) for a in inputs), *self.prepared]


class Session:
    """This machine (`remote` None) or one RPC session to a board."""

    def __init__(self, remote: "tvm_rpc.RPCSession | None", where: str, timeout: float):
        self.remote = remote
        self.where = where
        self.timeout = timeout

    @classmethod
    def open(cls, remote: "Remote | None" = None) -> "Session":
        """This machine (no `remote`), or the board `remote` names, giving up after its timeout."""
        if remote is None:
            return cls(None, "this machine", 30.0)
        timeout, where = remote.timeout, remote.describe()
        if remote.rpc:
            host, port = address("--rpc", remote.rpc)
            _reachable(host, port, where, timeout)
            return cls(_within(timeout, lambda: tvm_rpc.connect(host, port), where, "connecting"), where, timeout)
        host, port = address("--tracker", remote.tracker)
        tracker = f"tracker {remote.tracker}"
        _reachable(host, port, tracker, timeout)
        client = _within(timeout, lambda: tvm_rpc.connect_tracker(host, port), tracker, "connecting")
        board = _within(
            timeout,
            lambda: client.request(remote.key, max_retry=1),
            tracker,
            f"waiting for a free board with key '{remote.key}'",
        )
        return cls(board, where, timeout)

    def describe(self) -> str:
        return self.where

    def machine(self) -> str | None:
        """The device's CPU architecture as `uname -m` prints it; None when the board cannot say."""
        if self.remote is None:
            return platform.machine()
        return self._ask(profiler.MACHINE, "asking its architecture")

    def versions(self) -> dict | None:
        """{"tvm": ..., "tvmbits": ...} installed on the device; None when the board cannot say."""
        if self.remote is None:
            return json.loads(profiler.versions())
        answer = self._ask(profiler.VERSIONS, "asking its versions")
        return None if answer is None else json.loads(answer)

    def _ask(self, name: str, what: str) -> str | None:
        """The board's answer to its function `name`; None when it has none (a plain TVM
        rpc_server, or a board with an older tvmbits)."""
        try:
            ask = self.remote.get_function(name)
        except Exception:
            return None
        return str(self._call(what, ask))

    def device(self, kind: str) -> tvm.runtime.Device:
        if kind not in ("cpu", "cuda"):
            raise ArtifactError(f"unknown device kind '{kind}' in the artifact")
        host = self.remote if self.remote is not None else tvm
        return host.cpu() if kind == "cpu" else host.cuda()

    def load(self, library: str | Path, device_kind: str = "cpu") -> Loaded:
        """Upload (for a board) and load `library` into a Relax VM on the session's device."""
        dev = self.device(device_kind)
        if self.remote is None:
            threads.size_pool()
            if device_kind == "cuda":
                _register_cuda_compiler(dev)
            lib = tvm.runtime.load_module(str(library))
        else:
            name = Path(library).name
            self._call("uploading the library", lambda: self.remote.upload(str(library)))
            lib = self._call("loading the library", lambda: self.remote.load_module(name))
        if device_kind == "cuda" and not self._call("opening its GPU", lambda: dev.exist):
            raise BoardError(f"{self.where} has no CUDA device to run this artifact on")
        vm = self._call("starting the VM", lambda: relax.VirtualMachine(lib, dev))
        return Loaded(lib, vm, dev, self._call("unpacking the weights", lambda: _prepare(vm)))

    def close(self) -> None:
        self.remote = None  # TVM closes the RPC session when its last reference goes

    def _call(self, what: str, fn):
        """Run `fn`; a failure of a board becomes one line naming the board and the step."""
        if self.remote is None:
            return fn()
        try:
            return fn()
        except Exception as err:  # TVM re-raises the board's errors as Python builtins of any kind
            raise BoardError(f"{self.where} failed while {what}: {_link_error(err)}") from None


def run(session: Session, loaded: Loaded, args: list[np.ndarray]) -> list[np.ndarray]:
    """Run `main` once on `args`; the outputs as numpy arrays, in the function's order."""

    def call():
        out = loaded.vm["main"](*loaded.arguments(args))
        values = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
        return [value.numpy() for value in values]

    return session._call("running the model", call)


def time(session: Session, loaded: Loaded, args: list[np.ndarray], number: int, repeat: int,
         min_repeat_ms: int = 0) -> list[float]:
    """`repeat` timings of `main` in ms, each the mean of `number` runs, measured on the device."""

    def measure():
        loaded.vm.set_input("main", *loaded.arguments(args))
        timer = loaded.vm.time_evaluator(
            "invoke_stateful", loaded.device, number=number, repeat=repeat, min_repeat_ms=min_repeat_ms
        )
        return [t * 1e3 for t in timer("main").results]

    return session._call("timing the model", measure)


def profile(session: Session, loaded: Loaded, args: list[np.ndarray], runs: int = 5) -> list[dict]:
    """Per-kernel times of `main` measured on the device (`tvmbits.board.profiler`): one row per
    kernel, {name, calls, ms, share}, ms being its median time per model run."""
    tensors = loaded.arguments(args)
    if session.remote is None:
        report = profiler.profile(loaded.vm.module, "main", runs, *tensors)
    else:
        try:
            remote_profile = session.remote.get_function(profiler.PROFILE)
        except Exception:
            raise BoardError(
                f"{session.where} cannot profile: start it with `tvmbits board serve` "
                "(a plain TVM rpc_server has no profiler)"
            ) from None
        report = session._call("profiling", lambda: remote_profile(loaded.vm.module, "main", runs, *tensors))
    rows = json.loads(str(report))
    total = sum(row["ms"] for row in rows) or 1.0
    for row in rows:
        row["share"] = row["ms"] / total
    return rows


def _prepare(vm: relax.VirtualMachine) -> tuple:
    """Run the library's `prepare` once (through the VM's stateful calls, which fetch a tuple's
    fields one by one, also over RPC): the tensors `main` takes after the inputs."""
    vm.set_input(PREPARE)
    vm.invoke_stateful(PREPARE)
    return tuple(vm.get_outputs(PREPARE))


def _register_cuda_compiler(dev: tvm.runtime.Device) -> None:
    """A CUDA artifact holds its kernels as CUDA C source (TVM 0.27's `cuda` module format),
    compiled when the library is loaded by the global `tvm_callback_cuda_compile`: importing
    `tvm.support.nvcc` registers it (NVRTC through cuda-bindings; nvcc with
    TVM_CUDA_COMPILE_MODE=nvcc, which is chosen here when cuda-bindings is missing). Refuses first, in one line, a machine with no CUDA device, where
    loading would fail with TVM's own message."""
    if not dev.exist:
        raise BoardError("this machine has no CUDA device (or no CUDA driver) to run this artifact on")
    import tvm.support.nvcc  # noqa: F401 (registers tvm_callback_cuda_compile)

    if "TVM_CUDA_COMPILE_MODE" not in os.environ and not _has_nvrtc():
        if shutil.which("nvcc") is None:
            raise BoardError("compiling this CUDA artifact's kernels needs NVRTC (pip install cuda-bindings) or nvcc")
        os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"  # NVRTC's Python bindings are not installed


def _has_nvrtc() -> bool:
    """Whether NVRTC's Python bindings import (cuda-bindings' `cuda.bindings.nvrtc`, which TVM's
    default CUDA compile uses; a module that merely is named `cuda` does not count)."""
    try:
        from cuda.bindings import nvrtc  # noqa: F401
    except ImportError:
        return False
    return True


def _reachable(host: str, port: int, where: str, timeout: float) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except socket.timeout:
        raise BoardError(f"{where} is unreachable: no answer within {timeout:g} s") from None
    except OSError as err:
        raise BoardError(f"{where} is unreachable: {err.strerror or err}") from None


def _within(timeout: float, fn, where: str, what: str):
    """`fn()` in a helper thread; a UserError if it fails or has not returned after `timeout` s.

    TVM's connect and tracker requests block without a limit; the abandoned thread is a daemon.
    """
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except Exception as err:  # reported below, in the caller's thread
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise BoardError(f"{where}: gave up {what} after {timeout:g} s (a slow or busy board may need a longer --timeout)")
    if "error" in result:
        raise BoardError(f"{where}: failed {what}: {_first_line(result['error'])}")
    return result["value"]


def _link_error(err: Exception) -> str:
    """What went wrong in a call to a board, in words: a closed link says so."""
    message = _first_line(err)
    # how a dead board shows depends on when it died: TVM's shutdown code, a reset socket, a send
    # into a closed socket, or an RPC error
    closed = any(sign in message for sign in ("kShutdown", "Connection reset by peer", "Broken pipe"))
    if closed or isinstance(err, (ConnectionError, tvm.error.RPCError)):
        return f"the board closed the connection (stopped or crashed?): {message}"
    return message


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    # TVM errors put a traceback before the message; its last line says what happened
    return lines[-1] if lines else type(err).__name__
