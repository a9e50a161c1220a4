"""`tvmbits run` (and `tvmbits tune --rpc`) against TVM RPC servers started with `tvmbits board
serve` on this machine: direct, through a real TVM rpc_tracker with two keys, and every fault a
user meets (unreachable board, board killed mid-run, no free board of a key, wrong artifact),
each one error line, exit 2.
"""

import json
import os
import signal
import socket
import sys
import time

import numpy as np
import onnx
import pytest

from boards import TVMBITS, Process, free_port, one_error_line, serve, tvmbits
from compiled import run_local
from onnx_models import sign_conv
from tvmbits.artifact import open_artifact, write_artifact
from tvmbits.runtime import _link_error
from tvmbits.tuning_log import RECORDS


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny):
    """This module's folder (board and tracker logs), with the shared tiny_bnn as bnn.onnx and a
    one-layer model for the tuning runs as layer.onnx (one task: MetaSchedule's start-up and the
    default schedules' measurement are per task, and take most of a short run)."""
    folder = tmp_path_factory.mktemp("rpc")
    (folder / "bnn.onnx").symlink_to(tiny.model)
    onnx.save(sign_conv(), folder / "layer.onnx")
    return folder


@pytest.fixture(scope="module")
def model(tiny):
    """tiny_bnn compiled for this machine, and an input file for it."""
    return tiny.artifact, tiny.input


@pytest.fixture(scope="module")
def board(folder):
    server, port = serve(folder, "board")
    yield server, port
    server.stop()


@pytest.fixture(scope="module")
def tracker(folder):
    """A TVM rpc_tracker on loopback with two boards, registered as 'alpha' and 'beta'."""
    from tvm import rpc

    port = free_port()
    started = Process(
        [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
         "--port-end", str(port + 1), "--silent"],
        folder / "tracker.log",
    )
    boards = {}
    try:
        _wait_listening(port, started)
        for key in ("alpha", "beta"):
            boards[key] = serve(folder, key, "--tracker", f"127.0.0.1:{port}", "--key", key)[0]
        deadline = time.monotonic() + 30
        while set(rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"]) != {"alpha", "beta"}:
            assert time.monotonic() < deadline, "the boards did not register with the tracker"
            time.sleep(0.2)
        yield port, boards
    finally:
        for server in boards.values():
            server.stop()
        started.stop()


def _wait_listening(port: int, process: Process) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert process.proc.poll() is None, process.text()
            assert time.monotonic() < deadline, f"nothing listens on {port}: {process.text()}"
            time.sleep(0.2)


def test_rpc_run_equals_local_run(model, board, tmp_path):
    tar, x = model
    server, port = board
    done, _ = tvmbits("run", str(tar), "--input", f"input={x}", "--rpc", f"127.0.0.1:{port}",
                      "--output", str(tmp_path), "--repeat", "3", "--profile", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    expected, _ = run_local(tar, np.load(x))
    got = np.load(report["outputs"]["logits"])
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
    assert report["timing_ms"]["repeat"] == 3 and report["timing_ms"]["median"] > 0
    assert report["profile"] and all(row["calls"] >= 1 and row["ms"] >= 0 for row in report["profile"])
    assert sum(row["share"] for row in report["profile"]) == pytest.approx(1.0)


@pytest.mark.slow  # tuning over RPC runs by default through the tracker (below)
def test_tune_measures_on_the_board(board, folder, tmp_path):
    server, port = board
    loads = server.count("load_module")
    done, _ = tvmbits("tune", str(folder / "layer.onnx"), "--rpc", f"127.0.0.1:{port}", "--trials", "2",
                      "--log", str(tmp_path / "log"))
    assert done.returncode == 0, done.stderr
    assert "tune: " in done.stderr and " ms" in done.stderr and "failed" not in done.stderr
    assert (tmp_path / "log" / RECORDS).read_text().strip()
    assert server.count("load_module") >= loads + 2  # each candidate ran on the board


def test_tune_refuses_an_unreachable_board_before_lowering(folder):
    port = free_port()
    done, took = tvmbits("tune", str(folder / "bnn.onnx"), "--rpc", f"127.0.0.1:{port}", "--timeout", "5")
    one_error_line(done, f"board 127.0.0.1:{port} is unreachable")
    assert "importing" not in done.stderr and took < 30


def test_tracker_key_reaches_that_board(model, tracker, tmp_path):
    tar, x = model
    port, boards = tracker
    for key, other in (("beta", "alpha"), ("alpha", "beta")):
        loads = {name: server.count("load_module") for name, server in boards.items()}
        done, _ = tvmbits("run", str(tar), "--input", f"input={x}", "--tracker", f"127.0.0.1:{port}",
                          "--key", key, "--repeat", "1", "--json", "--timeout", "30")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["timing_ms"]["repeat"] == 1
        boards[key].wait_for("load_module", timeout=10, count=loads[key] + 1)
        assert boards[other].count("load_module") == loads[other], f"'{key}' also reached '{other}'"


def test_tune_measures_on_the_tracker_board_of_the_key(model, tracker, folder, tmp_path):
    port, boards = tracker
    loads = {name: server.count("load_module") for name, server in boards.items()}
    done, _ = tvmbits("tune", str(folder / "layer.onnx"), "--tracker", f"127.0.0.1:{port}", "--key", "beta",
                      "--trials", "2", "--log", str(tmp_path / "log"))
    assert done.returncode == 0, done.stderr
    assert "tune: " in done.stderr and " ms" in done.stderr and "failed" not in done.stderr
    assert (tmp_path / "log" / RECORDS).read_text().strip()
    assert boards["beta"].count("load_module") >= loads["beta"] + 2
    assert boards["alpha"].count("load_module") == loads["alpha"]


def test_no_free_board_of_the_key(model, tracker):
    tar, x = model
    port, _ = tracker
    done, took = tvmbits("run", str(tar), "--input", f"input={x}", "--tracker", f"127.0.0.1:{port}",
                         "--key", "gamma", "--timeout", "3", timeout=60)
    one_error_line(done, "gave up waiting for a free board with key 'gamma' after 3 s")
    assert 3 <= took < 30


def test_closed_port_is_unreachable(model):
    tar, x = model
    port = free_port()
    done, took = tvmbits("run", str(tar), "--input", f"input={x}", "--rpc", f"127.0.0.1:{port}", "--timeout", "5")
    one_error_line(done, f"board 127.0.0.1:{port} is unreachable")
    assert took < 30


def test_port_that_never_speaks_rpc(model):
    tar, x = model
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)  # connections complete in the backlog; nothing ever answers them
        port = silent.getsockname()[1]
        done, took = tvmbits("run", str(tar), "--input", f"input={x}", "--rpc", f"127.0.0.1:{port}",
                             "--timeout", "3", timeout=60)
    one_error_line(done, "gave up connecting after 3 s")
    assert 3 <= took < 30


def test_board_killed_mid_run(model, folder):
    tar, x = model
    server, port = serve(folder, "doomed")
    try:
        run = Process([*TVMBITS, "run", str(tar), "--input", f"input={x}", "--rpc", f"127.0.0.1:{port}",
                       "--repeat", "1000000", "--timeout", "10"], folder / "doomed-run.log")
        server.wait_for("load_module", timeout=60)
        time.sleep(1)  # into the timed runs
        assert run.proc.poll() is None, run.text()
        os.killpg(server.proc.pid, signal.SIGKILL)  # the server and its session worker, at once
        run.proc.wait(30)  # raises if the client hangs
        run.stop()
    finally:
        server.stop()
    lines = run.text().strip().splitlines()
    assert run.proc.returncode == 2 and "Traceback" not in run.text(), run.text()
    assert lines[-1].startswith(f"tvmbits: error: board 127.0.0.1:{port} failed while timing the model")
    assert "closed the connection" in lines[-1]


@pytest.mark.parametrize("message", [
    "RPCSessionTimeoutError: kShutdown",
    "Socket SockChannel::Recv Error:Connection reset by peer",  # a board killed while the client waits on it
    "Socket SockChannel::Send Error:Broken pipe",  # a board killed while the client sends to it
])
def test_a_dead_board_reads_as_a_closed_connection(message):
    assert _link_error(RuntimeError(f"Traceback ...\n{message}")).startswith("the board closed the connection")


def test_other_tvm_release_is_refused_before_upload(model, board, tmp_path):
    tar, x = model
    server, port = board
    art = open_artifact(tar)
    write_artifact(tmp_path / "old.tar", art.library, {**art.metadata, "tvm_version": "0.26.0"})
    uploads = server.count("load_module")
    done, _ = tvmbits("run", str(tmp_path / "old.tar"), "--input", f"input={x}", "--rpc", f"127.0.0.1:{port}")
    one_error_line(done, f"artifact is built with tvm 0.26.0 but board 127.0.0.1:{port} has tvm 0.27")
    assert server.count("load_module") == uploads


def test_serve_refuses_a_busy_port_a_lone_key_and_no_tracker():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        done, _ = tvmbits("board", "serve", "--port", str(port), timeout=60)
    one_error_line(done, f"cannot serve on 127.0.0.1:{port}")
    one_error_line(tvmbits("board", "serve", "--key", "alpha", timeout=60)[0], "--tracker and --key go together")
    gone = f"127.0.0.1:{free_port()}"
    one_error_line(tvmbits("board", "serve", "--port", str(free_port()), "--tracker", gone, "--key", "alpha",
                           timeout=60)[0], f"tracker {gone} is unreachable")


def test_serve_warns_when_binding_beyond_loopback():
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning comes, then the bind fails
    done, _ = tvmbits("board", "serve", "--host", "192.0.2.1", "--port", str(free_port()), timeout=60)
    warning = done.stderr.strip().splitlines()[0]
    assert warning.startswith("tvmbits: warning: TVM RPC has no authentication"), done.stderr
    one_error_line(done, "cannot serve on 192.0.2.1")
