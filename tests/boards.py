"""Boards for the tests: TVM RPC servers, trackers and emulated boards started as process groups
on loopback, and the `tvmbits` CLI run as a subprocess (as a user runs it against a board)."""

import socket
import subprocess
import sys
import time
from pathlib import Path

from tvmbits.board import emulate

TVMBITS = [sys.executable, "-m", "tvmbits"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A command run in its own process group, its output (stdout and stderr) in a log file."""

    def __init__(self, cmd: list[str], log: Path):
        self.log = Path(log)
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text()

    def count(self, fragment: str) -> int:
        return self.text().count(fragment)

    def wait_for(self, fragment: str, timeout: float, count: int = 1) -> None:
        """Wait until `fragment` is in the log `count` times; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while self.count(fragment) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode} before '{fragment}':\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no '{fragment}' within {timeout:g} s:\n{self.text()[-3000:]}")
            time.sleep(0.2)

    def stop(self, grace: float = 5.0) -> None:
        """End the whole process group (TVM's servers fork workers that outlive their parent):
        SIGTERM, then SIGKILL after `grace` seconds."""
        emulate.stop(self.proc, grace)
        self._out.close()


def processes_with(fragment: str) -> list[str]:
    """Command lines of this machine's processes that contain `fragment`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        line = " ".join(word.decode(errors="replace") for word in words if word)
        if fragment in line:
            found.append(line)
    return found


def serve(tmp: Path, name: str, *args: str) -> tuple[Process, int]:
    """`tvmbits board serve` on 127.0.0.1 and a free port, ready to take sessions."""
    port = free_port()
    server = Process([*TVMBITS, "board", "serve", "--port", str(port), *args], tmp / f"{name}.log")
    server.wait_for("tvmbits: serving TVM RPC on", timeout=60)
    return server, port


def tvmbits(*args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    """Run the `tvmbits` CLI; its completed process and how long it took (s)."""
    started = time.monotonic()
    done = subprocess.run([*TVMBITS, *args], capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def one_error_line(done: subprocess.CompletedProcess, fragment: str) -> str:
    """Assert the CLI failed as a user error: exit code 2, its last stderr line the only error line,
    no traceback, and `fragment` in it. Returns that line."""
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("tvmbits: error: ")]
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    assert errors == lines[-1:] and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert fragment in errors[0], errors[0]
    return errors[0]
