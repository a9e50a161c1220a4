"""`tvmbits tune`: measurements land in the tuning log as they finish, a killed run loses none of
them, a rerun appends, `compile` applies the log and stays exact, bad log lines are skipped."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compiled import run_local
from onnx_models import dyadic_input, tiny_bnn
from tvmbits.cli import main
from tvmbits.tune import _choose, _interruptible
from tvmbits.tuning_log import CONFIRMED, RECORDS, TUNED_ON, WORKLOADS


def records(log_dir):
    lines = (log_dir / RECORDS).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "bnn.onnx"
    onnx.save(tiny_bnn(channels=(8, 32, 32), size=12), path)
    return path


def _lines(log_dir):
    path = log_dir / RECORDS
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _interrupt(command, sig, ready):
    """Run `command` in its own process group and send it `sig` (as Ctrl-C or kill -9 would)
    once `ready()`; its exit code and stderr. SIGINT is not ignored there, even when the tests
    run as a background job, which ignores it (as `tune` would then too)."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600  # the first batch of measurements, on a busy machine
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            break
        time.sleep(0.5)
    os.killpg(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        err += "\n(no exit within 120 s of the signal)"
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # measurement workers left behind, if any
    except ProcessLookupError:
        pass
    return proc.returncode, err


@pytest.fixture(scope="module")
def killed_then_resumed(model_file):
    """A tune run killed (kill -9) after its first measurements, a second run on the same log
    interrupted (Ctrl-C) after it has added some, then a third run on the same log."""
    log_dir = model_file.parent / "log"
    command = [sys.executable, "-m", "tvmbits", "tune", str(model_file), "--trials", "64", "--log", str(log_dir)]
    _interrupt(command, signal.SIGKILL, lambda: _lines(log_dir) > 0)
    after_kill = records(log_dir)
    killed_lines = _lines(log_dir)
    # as soon as it has added measurements (its default schedules, recorded before the search):
    # the search of this small model's spaces can end within seconds
    interrupted = _interrupt(command, signal.SIGINT, lambda: _lines(log_dir) > killed_lines)
    after_interrupt = records(log_dir)
    command[command.index("64")] = "4"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=900)  # a busy machine
    return log_dir, after_kill, interrupted, after_interrupt, resumed


def test_killed_run_keeps_its_measurements_and_a_rerun_appends(killed_then_resumed):
    log_dir, after_kill, _, after_interrupt, resumed = killed_then_resumed
    assert after_kill, "the killed run recorded nothing"
    assert resumed.returncode == 0, resumed.stderr
    assert "tune: " in resumed.stderr and "best" in resumed.stderr  # progress lines
    assert "tune: default schedule of " in resumed.stderr  # measured beside the candidates
    # then each kernel's default and fastest records re-measured against each other, one chosen
    tasks = resumed.stderr.count("tune: default schedule of ")
    assert "tune: confirming" in resumed.stderr
    assert len(json.loads((log_dir / CONFIRMED).read_text())) == tasks
    assert resumed.stderr.count(" schedule kept, median ") + resumed.stderr.count(": tuned schedule, median ") == tasks
    after_resume = records(log_dir)
    assert after_resume[: len(after_kill)] == after_kill and len(after_resume) >= len(after_interrupt)
    assert json.loads((log_dir / TUNED_ON).read_text())["cores"] == os.cpu_count()


def test_interrupted_run_says_so_keeps_whole_lines_and_a_rerun_resumes(killed_then_resumed):
    log_dir, after_kill, (code, err), after_interrupt, resumed = killed_then_resumed
    assert code == 130 and err.strip().splitlines()[-1] == "tvmbits: interrupted", err[-2000:]
    assert "Traceback" not in err and "tune: stopping after the builds and measurements under way" in err, err[-2000:]
    assert after_interrupt[: len(after_kill)] == after_kill  # every line whole, none lost
    assert resumed.returncode == 0 and records(log_dir)[: len(after_interrupt)] == after_interrupt


def test_ctrl_c_is_noted_and_spares_the_workers_started_meanwhile(sigint_handler):
    """The first SIGINT only marks the tuning interrupted; a worker process started meanwhile (as
    MetaSchedule's pools start them, from a thread) has SIGINT blocked, so the terminal's Ctrl-C,
    sent to the whole process group, cannot interrupt it mid-import."""
    probe = "import signal, sys; sys.exit(3 if signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []) else 4)"
    codes, lines = [], []
    sigint_handler()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with _interruptible(lines.append) as interrupted:
        worker = threading.Thread(target=lambda: codes.append(subprocess.run([sys.executable, "-c", probe]).returncode))
        worker.start()
        worker.join()
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 10
        while not interrupted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert interrupted and signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert codes == [3] and len(lines) == 1 and "Ctrl-C again" in lines[0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask


def test_an_ignored_ctrl_c_stays_ignored(sigint_handler):
    sigint_handler(signal.SIG_IGN)
    with _interruptible(print) as interrupted:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
    assert not interrupted


def test_compile_applies_the_log_and_stays_exact(killed_then_resumed, model_file, tmp_path, capsys):
    log_dir = killed_then_resumed[0]
    with open(log_dir / RECORDS, "a") as f:
        f.write('[0, {"truncated": \n')  # what a run killed mid-write can leave
    out = tmp_path / "tuned.tar"
    assert main(["compile", str(model_file), "-o", str(out), "--tuning-log", str(log_dir)]) == 0
    assert "not a tuning-log entry, skipped" in capsys.readouterr().err
    x = dyadic_input([1, 3, 12, 12], seed=2)
    got, meta = run_local(out, x)
    assert meta["tuning_log"] == str(log_dir)
    expected = ort.InferenceSession(str(model_file)).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, expected)


def test_compile_without_tuning_records_no_log(model_file, tmp_path):
    out = tmp_path / "plain.tar"
    assert main(["compile", str(model_file), "-o", str(out), "--no-tuning"]) == 0
    _, meta = run_local(out, dyadic_input([1, 3, 12, 12]))
    assert meta["tuning_log"] is None


def test_tune_errors_are_one_line(model_file, tmp_path, capsys):
    assert main(["tune", str(model_file), "--trials", "0", "--log", str(tmp_path / "l")]) == 2
    assert main(["tune", str(model_file), "--tracker", "127.0.0.1:9"]) == 2
    assert main(["tune", str(model_file), "--rpc", "127.0.0.1:9", "--tracker", "127.0.0.1:9", "--key", "k"]) == 2
    assert main(["compile", str(model_file), "--tuning-log", str(tmp_path / "absent")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert [e for e in errors if e.startswith("tvmbits: error:")] == [
        "tvmbits: error: --trials 0: must be at least 1",
        "tvmbits: error: --tracker and --key go together",
        "tvmbits: error: give either --rpc or --tracker, not both",
        f"tvmbits: error: {tmp_path / 'absent'}: no such tuning log folder",
    ]
    assert not (tmp_path / "l" / WORKLOADS).exists()


@pytest.mark.parametrize("times, default, chosen", [
    ({0: [3, 3, 3, 3, 3], 1: [2, 9, 2, 9, 2]}, 0, 1),  # the lowest median, not the lowest mean
    ({0: [2, 2, 2, 2, 2], 1: [2, 2, 2, 2, 2]}, 0, 0),  # a tie keeps the default
    ({0: [2, 2, 2, 2, 2], 1: [2, 2, 2, 2, 2]}, 1, 1),
    ({0: [5, 5, 5], 1: [1, 1]}, 0, 0),  # timed in too few rounds: not chosen
    ({0: [1], 1: []}, None, None),  # nothing timed in enough rounds: no choice
])
def test_confirmation_takes_the_lowest_median_of_enough_rounds(times, default, chosen):
    assert _choose(times, default) == chosen
